"""Helpers the resource modules share: row shapes, group lookup, common options."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt
from carapace.db import groups
from carapace.db.destinations import notify_changed
from carapace.errors import NotFoundError, ValidationError

ID = Opt("id", "The row's id (may also be given positionally).", required=True)
FORCE = Opt("force", "Also delete the rows that depend on it.", type="bool")
LIMIT = Opt("limit", "At most this many rows (default 200).", type="int", minimum=1)
DEFAULT_LIMIT = 200

T = TypeVar("T")


def row(obj: Any) -> dict[str, Any]:
    """A row dataclass as a JSON-able dict (field order = column order)."""
    return dataclasses.asdict(obj)


def rows(objs: list[Any], args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    limit = (args or {}).get("limit") or DEFAULT_LIMIT
    return [row(o) for o in objs[:limit]]


def require(found: T | None, what: str, id: str) -> T:
    """``found``, or not-found ("no <what> '<id>'") when it is ``None``."""
    if found is None:
        raise NotFoundError(f"no {what} {id!r}")
    return found


def group_id(ctx: AdminContext, id_or_folder: str) -> str:
    """An agent group's id from its id or its folder (not-found otherwise)."""
    return groups.require_agent_group(ctx.db, id_or_folder).id


def need_change(args: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    changes = {k: args[k] for k in keys if k in args}
    if not changes:
        flags = ", ".join("--" + k.replace("_", "-") for k in keys)
        raise ValidationError(f"nothing to update: give at least one of {flags}")
    return changes


def notify_targets_of_channel(ctx: AdminContext, messaging_group_id: str) -> None:
    """Re-project every agent group that has a destination pointing at this chat."""
    for r in ctx.db.execute(
        "SELECT DISTINCT agent_group_id FROM agent_destinations "
        "WHERE target_type='channel' AND target_id=?",
        (messaging_group_id,),
    ).fetchall():
        notify_changed(ctx.db, r[0])
