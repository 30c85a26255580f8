"""``agent_destinations``: an agent's name map and its ACL (row exists ⇔ allowed).

Every change calls the projection hooks with the agent group id, so the host can refresh
the ``destinations`` table of that group's running sessions at once (DESIGN §1 inv. 5).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.db.migrations_nanoclaw import normalize_name
from carapace.errors import ConflictError, NotFoundError, ValidationError
from carapace.timefmt import iso

TARGET_TYPES = ("channel", "agent")

ProjectionHook = Callable[[sqlite3.Connection, str], None]
_hooks: list[ProjectionHook] = []


def add_projection_hook(hook: ProjectionHook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


def remove_projection_hook(hook: ProjectionHook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


def notify_changed(db: sqlite3.Connection, agent_group_id: str) -> None:
    """Tell every hook that this group's destinations (or wirings) changed."""
    for hook in list(_hooks):
        hook(db, agent_group_id)


@dataclass(frozen=True)
class Destination:
    agent_group_id: str
    local_name: str
    target_type: str
    target_id: str
    created_at: str


def list_destinations(
    db: sqlite3.Connection, agent_group_id: str | None = None
) -> list[Destination]:
    if agent_group_id is None:
        rows = db.execute("SELECT * FROM agent_destinations ORDER BY agent_group_id, local_name")
    else:
        rows = db.execute(
            "SELECT * FROM agent_destinations WHERE agent_group_id=? ORDER BY local_name",
            (agent_group_id,),
        )
    return from_rows(Destination, rows.fetchall())


def get_destination(
    db: sqlite3.Connection, agent_group_id: str, local_name: str
) -> Destination | None:
    row = db.execute(
        "SELECT * FROM agent_destinations WHERE agent_group_id=? AND local_name=?",
        (agent_group_id, local_name),
    ).fetchone()
    return from_row(Destination, row)


def find_by_target(
    db: sqlite3.Connection, agent_group_id: str, target_type: str, target_id: str
) -> Destination | None:
    row = db.execute(
        "SELECT * FROM agent_destinations WHERE agent_group_id=? AND target_type=? AND target_id=? "
        "ORDER BY created_at LIMIT 1",
        (agent_group_id, target_type, target_id),
    ).fetchone()
    return from_row(Destination, row)


def channel_refusal(
    db: sqlite3.Connection, agent_group_id: str, own_chat_id: str | None,
    channel_type: str, platform_id: str,
) -> str | None:  # fmt: skip
    """Why a session of ``agent_group_id`` (its own chat: ``own_chat_id``) may not send to
    the chat ``channel_type``/``platform_id``; None when it may: its own chat, or one its
    agent group has as a channel destination (the central table, never the session's view)."""
    mg = db.execute(
        "SELECT id FROM messaging_groups WHERE channel_type=? AND platform_id=?",
        (channel_type, platform_id),
    ).fetchone()
    if mg is None:
        return f"unknown messaging group {channel_type}:{platform_id}"
    if own_chat_id == mg[0] or find_by_target(db, agent_group_id, "channel", mg[0]) is not None:
        return None
    return f"unauthorized channel destination {channel_type}:{platform_id}"


def free_name(db: sqlite3.Connection, agent_group_id: str, wanted: str) -> str:
    base = normalize_name(wanted)
    name, n = base, 1
    while get_destination(db, agent_group_id, name) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def add_destination(
    db: sqlite3.Connection,
    agent_group_id: str,
    local_name: str,
    target_type: str,
    target_id: str,
    *,
    now: datetime | None = None,
    notify: bool = True,
) -> Destination:
    if target_type not in TARGET_TYPES:
        raise ValidationError(f"target_type must be one of {', '.join(TARGET_TYPES)}")
    name = normalize_name(local_name)
    if name != local_name:
        raise ValidationError(
            f"destination name {local_name!r} is not normalised; use {name!r} "
            "(lower case, digits and '-')"
        )
    if db.execute("SELECT 1 FROM agent_groups WHERE id=?", (agent_group_id,)).fetchone() is None:
        raise NotFoundError(f"no agent group {agent_group_id!r}")
    table = "messaging_groups" if target_type == "channel" else "agent_groups"
    if db.execute(f"SELECT 1 FROM {table} WHERE id=?", (target_id,)).fetchone() is None:
        raise NotFoundError(f"no {target_type} target {target_id!r}")
    dest = Destination(agent_group_id, name, target_type, target_id, iso(now))
    with transaction(db):
        if get_destination(db, agent_group_id, name) is not None:
            raise ConflictError(f"agent group {agent_group_id} already has a destination {name!r}")
        db.execute(
            "INSERT INTO agent_destinations VALUES (?, ?, ?, ?, ?)",
            (
                dest.agent_group_id,
                dest.local_name,
                dest.target_type,
                dest.target_id,
                dest.created_at,
            ),
        )
    if notify:
        notify_changed(db, agent_group_id)
    return dest


def ensure_channel_destination(
    db: sqlite3.Connection,
    agent_group_id: str,
    messaging_group_id: str,
    *,
    now: datetime | None = None,
    notify: bool = True,
) -> Destination:
    """The destination a wiring implies (spec §4.5): reuse any row with that target."""
    existing = find_by_target(db, agent_group_id, "channel", messaging_group_id)
    if existing is not None:
        return existing
    mg = db.execute(
        "SELECT name, channel_type FROM messaging_groups WHERE id=?", (messaging_group_id,)
    ).fetchone()
    if mg is None:
        raise NotFoundError(f"no messaging group {messaging_group_id!r}")
    name = free_name(
        db, agent_group_id, mg["name"] or f"{mg['channel_type']}-{messaging_group_id[:8]}"
    )
    return add_destination(
        db, agent_group_id, name, "channel", messaging_group_id, now=now, notify=notify
    )


def remove_destination(db: sqlite3.Connection, agent_group_id: str, local_name: str) -> None:
    with transaction(db):
        cur = db.execute(
            "DELETE FROM agent_destinations WHERE agent_group_id=? AND local_name=?",
            (agent_group_id, local_name),
        )
        if cur.rowcount == 0:
            raise NotFoundError(f"agent group {agent_group_id} has no destination {local_name!r}")
    notify_changed(db, agent_group_id)


@dataclass(frozen=True)
class ProjectedDestination:
    """One row of a session's ``destinations`` table."""

    name: str
    display_name: str | None
    type: str
    channel_type: str | None
    platform_id: str | None
    agent_group_id: str | None


def projection(db: sqlite3.Connection, agent_group_id: str) -> list[ProjectedDestination]:
    """What a session of this group may address (dangling targets skipped; spec §4.5).
    One query (a group wired to many chats used to cost one query per destination, on the
    event loop at every runner start; issue 19)."""
    out: list[ProjectedDestination] = []
    rows = db.execute(
        "SELECT d.local_name, d.target_type, d.target_id, mg.id AS mg_id, mg.name AS mg_name, "
        "mg.channel_type, mg.platform_id, ag.id AS ag_id, ag.name AS ag_name "
        "FROM agent_destinations d "
        "LEFT JOIN messaging_groups mg ON d.target_type='channel' AND mg.id=d.target_id "
        "LEFT JOIN agent_groups ag ON d.target_type!='channel' AND ag.id=d.target_id "
        "WHERE d.agent_group_id=? ORDER BY d.local_name",
        (agent_group_id,),
    ).fetchall()
    for r in rows:
        if r["target_type"] == "channel":
            if r["mg_id"] is None:
                continue
            out.append(
                ProjectedDestination(
                    r["local_name"],
                    r["mg_name"] or r["local_name"],
                    "channel",
                    r["channel_type"],
                    r["platform_id"],
                    None,
                )
            )
        else:
            if r["ag_id"] is None:
                continue
            out.append(
                ProjectedDestination(
                    r["local_name"], r["ag_name"], "agent", None, None, r["target_id"]
                )
            )
    return out
