"""What a spawn writes before a runner starts: the session's projections (destinations,
routing) and the agent group folder's ``container.json`` and composed ``CLAUDE.md``.

Two halves, so the file work can leave the event loop (issue 19): :func:`wake_plan` reads
the central DB (the caller's thread); :func:`write_wake_files` writes only what differs
from what is there, touching no central DB, so a worker thread may run it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carapace import safefs
from carapace.config import Home
from carapace.db import groups
from carapace.db.destinations import ProjectedDestination, projection
from carapace.db.projection import routing_of, write_routing_row, write_rows
from carapace.db.session import SessionPaths
from carapace.db.sessions import Session
from carapace.host import groupfiles
from carapace.jsonutil import dumps


@dataclass(frozen=True)
class WakePlan:
    """What a spawn writes into the session and group folders."""

    paths: SessionPaths
    agent_dir: Path
    destinations: list[ProjectedDestination]
    routing: tuple[str | None, str | None, str | None]
    container: dict[str, Any]


def wake_plan(db: sqlite3.Connection, home: Home, paths: SessionPaths,
              session: Session) -> WakePlan:  # fmt: skip
    """The central-DB half (the caller's thread)."""
    group = groups.get_agent_group(db, session.agent_group_id)
    if group is None:
        raise LookupError(f"agent group {session.agent_group_id} is gone")
    cfg = groups.get_container_config(db, group.id) or groups.ContainerConfig(group.id)
    doc = cfg.to_json()
    doc.update({"groupName": group.name, "agentGroupId": group.id})
    doc["assistantName"] = doc.get("assistantName") or group.name
    if session.agent_provider:
        doc["provider"] = session.agent_provider
    doc = {k: v for k, v in doc.items() if v is not None}
    return WakePlan(
        paths, home.group_dir(group.folder),
        projection(db, session.agent_group_id), routing_of(db, session), doc,
    )  # fmt: skip


def write_wake_files(home: Home, plan: WakePlan) -> None:
    """The file half: no central DB, so a worker thread may run it. Writes only what
    differs from what is there."""
    if plan.paths.inbound.exists():
        write_rows(plan.paths, plan.destinations)
        write_routing_row(plan.paths, plan.routing)
    plan.agent_dir.mkdir(parents=True, exist_ok=True)
    # The group folder is the agent's: unless it holds exactly this already, a fresh
    # O_EXCL temp file is renamed over the entry, so a planted ``container.json`` or
    # temp-file link is replaced, never followed.
    safefs.write_beneath_if_changed(plan.agent_dir, "container.json",
                                    dumps(plan.container).encode(), 0o600)  # fmt: skip
    groupfiles.compose_group(home, plan.agent_dir)  # NanoClaw's roles; CLAUDE.md
