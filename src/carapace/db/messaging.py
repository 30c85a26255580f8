"""Messaging groups (chats) and wirings (``messaging_groups``, ``messaging_group_agents``).

Engage columns: NanoClaw's migration 010 left ``engage_mode``, ``sender_scope`` and
``ignored_message_policy`` nullable with no default (spec §11.1 item 12). carapace keeps the
physical schema (so NanoClaw files stay byte-compatible) but always writes explicit values
and reads NULL as the intended default: ``mention`` / ``all`` / ``drop`` / ``shared``.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.db.destinations import ensure_channel_destination, notify_changed
from carapace.errors import ConflictError, NotFoundError, ValidationError
from carapace.timefmt import iso, new_id

UNKNOWN_SENDER_POLICIES = ("strict", "request_approval", "public")
ENGAGE_MODES = ("pattern", "mention", "mention-sticky")
SENDER_SCOPES = ("all", "known")
IGNORED_POLICIES = ("drop", "accumulate")
SESSION_MODES = ("shared", "per-thread", "agent-shared")
MAX_PATTERN_LEN = 500


@dataclass(frozen=True)
class MessagingGroup:
    id: str
    channel_type: str
    platform_id: str
    name: str | None
    is_group: int | None
    unknown_sender_policy: str
    created_at: str
    denied_at: str | None = None


@dataclass(frozen=True)
class Wiring:
    id: str
    messaging_group_id: str
    agent_group_id: str
    session_mode: str | None
    priority: int | None
    created_at: str
    engage_mode: str | None
    engage_pattern: str | None
    sender_scope: str | None
    ignored_message_policy: str | None

    @property
    def mode(self) -> str:
        return self.engage_mode or "mention"

    @property
    def scope(self) -> str:
        return self.sender_scope or "all"

    @property
    def ignored(self) -> str:
        return self.ignored_message_policy or "drop"

    @property
    def sessions(self) -> str:
        return self.session_mode or "shared"


def _check(value: str | None, allowed: tuple[str, ...], what: str) -> None:
    if value is not None and value not in allowed:
        raise ValidationError(f"{what} must be one of {', '.join(allowed)} (got {value!r})")


def validate_pattern(pattern: str) -> None:
    """A safe-regex policy: bounded length, compiles, no nested unbounded quantifiers."""
    if len(pattern) > MAX_PATTERN_LEN:
        raise ValidationError(f"engage pattern longer than {MAX_PATTERN_LEN} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValidationError(f"engage pattern is not a valid regex: {exc}")
    if re.search(r"\([^)]*[+*][^)]*\)\s*[+*{]", pattern):
        raise ValidationError(
            "engage pattern has a nested repetition like (a+)+ that can hang the router"
        )


def create_messaging_group(
    db: sqlite3.Connection,
    channel_type: str,
    platform_id: str,
    *,
    name: str | None = None,
    is_group: bool = False,
    unknown_sender_policy: str = "strict",
    id: str | None = None,
    now: datetime | None = None,
) -> MessagingGroup:
    _check(unknown_sender_policy, UNKNOWN_SENDER_POLICIES, "unknown_sender_policy")
    if not channel_type or not platform_id:
        raise ValidationError("channel_type and platform_id are required")
    mg = MessagingGroup(
        id or new_id("mg", now), channel_type, platform_id, name, int(is_group),
        unknown_sender_policy, iso(now), None,
    )  # fmt: skip
    with transaction(db):
        if get_messaging_group_by_platform(db, channel_type, platform_id) is not None:
            raise ConflictError(f"messaging group {channel_type}:{platform_id} exists already")
        db.execute(
            "INSERT INTO messaging_groups (id, channel_type, platform_id, name, is_group, "
            "unknown_sender_policy, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (mg.id, mg.channel_type, mg.platform_id, mg.name, mg.is_group,
             mg.unknown_sender_policy, mg.created_at),
        )  # fmt: skip
    return mg


def get_messaging_group(db: sqlite3.Connection, id: str) -> MessagingGroup | None:
    row = db.execute("SELECT * FROM messaging_groups WHERE id=?", (id,)).fetchone()
    return from_row(MessagingGroup, row)


def get_messaging_group_by_platform(
    db: sqlite3.Connection, channel_type: str, platform_id: str
) -> MessagingGroup | None:
    row = db.execute(
        "SELECT * FROM messaging_groups WHERE channel_type=? AND platform_id=?",
        (channel_type, platform_id),
    ).fetchone()
    return from_row(MessagingGroup, row)


def list_messaging_groups(db: sqlite3.Connection) -> list[MessagingGroup]:
    rows = db.execute("SELECT * FROM messaging_groups ORDER BY created_at, id").fetchall()
    return from_rows(MessagingGroup, rows)


def update_messaging_group(
    db: sqlite3.Connection,
    id: str,
    *,
    name: str | None = None,
    is_group: bool | None = None,
    unknown_sender_policy: str | None = None,
    denied_at: str | None = None,
) -> MessagingGroup:
    _check(unknown_sender_policy, UNKNOWN_SENDER_POLICIES, "unknown_sender_policy")
    if get_messaging_group(db, id) is None:
        raise NotFoundError(f"no messaging group {id!r}")
    with transaction(db):
        for col, value in (
            ("name", name),
            ("is_group", None if is_group is None else int(is_group)),
            ("unknown_sender_policy", unknown_sender_policy),
            ("denied_at", denied_at),
        ):
            if value is not None:
                db.execute(f"UPDATE messaging_groups SET {col}=? WHERE id=?", (value, id))
    mg = get_messaging_group(db, id)
    assert mg is not None
    return mg


def delete_messaging_group(db: sqlite3.Connection, id: str, *, force: bool = False) -> None:
    if get_messaging_group(db, id) is None:
        raise NotFoundError(f"no messaging group {id!r}")
    deps = {
        "wirings": "SELECT COUNT(*) FROM messaging_group_agents WHERE messaging_group_id=?",
        "sessions": "SELECT COUNT(*) FROM sessions WHERE messaging_group_id=?",
        "user_dms": "SELECT COUNT(*) FROM user_dms WHERE messaging_group_id=?",
        "destinations": "SELECT COUNT(*) FROM agent_destinations "
        "WHERE target_type='channel' AND target_id=?",
        "sender_approvals": "SELECT COUNT(*) FROM pending_sender_approvals "
        "WHERE messaging_group_id=?",
        "channel_approvals": "SELECT COUNT(*) FROM pending_channel_approvals "
        "WHERE messaging_group_id=?",
    }
    found = {k: int(db.execute(sql, (id,)).fetchone()[0]) for k, sql in deps.items()}
    found = {k: n for k, n in found.items() if n}
    if found and not force:
        listing = ", ".join(f"{n} {k}" for k, n in found.items())
        raise ConflictError(f"messaging group {id} is still used by {listing}; use --force")
    touched = [
        r[0]
        for r in db.execute(
            "SELECT DISTINCT agent_group_id FROM agent_destinations "
            "WHERE target_type='channel' AND target_id=?",
            (id,),
        )
    ]
    with transaction(db):
        db.execute(
            "UPDATE sessions SET messaging_group_id=NULL, status='closed' WHERE messaging_group_id=?",
            (id,),
        )
        for sql in (
            "DELETE FROM messaging_group_agents WHERE messaging_group_id=?",
            "DELETE FROM user_dms WHERE messaging_group_id=?",
            "DELETE FROM agent_destinations WHERE target_type='channel' AND target_id=?",
            "DELETE FROM pending_sender_approvals WHERE messaging_group_id=?",
            "DELETE FROM pending_channel_approvals WHERE messaging_group_id=?",
            "DELETE FROM messaging_groups WHERE id=?",
        ):
            db.execute(sql, (id,))
    for ag in touched:
        notify_changed(db, ag)


def create_wiring(
    db: sqlite3.Connection,
    messaging_group_id: str,
    agent_group_id: str,
    *,
    engage_mode: str = "mention",
    engage_pattern: str | None = None,
    sender_scope: str = "all",
    ignored_message_policy: str = "drop",
    session_mode: str = "shared",
    priority: int = 0,
    id: str | None = None,
    now: datetime | None = None,
) -> Wiring:
    """Wire a chat to an agent group, creating the matching destination row (spec §4.5)."""
    _check(engage_mode, ENGAGE_MODES, "engage_mode")
    _check(sender_scope, SENDER_SCOPES, "sender_scope")
    _check(ignored_message_policy, IGNORED_POLICIES, "ignored_message_policy")
    _check(session_mode, SESSION_MODES, "session_mode")
    if engage_mode == "pattern":
        if not engage_pattern:
            raise ValidationError("engage_mode 'pattern' needs an engage_pattern ('.' = always)")
        validate_pattern(engage_pattern)
    if get_messaging_group(db, messaging_group_id) is None:
        raise NotFoundError(f"no messaging group {messaging_group_id!r}")
    if db.execute("SELECT 1 FROM agent_groups WHERE id=?", (agent_group_id,)).fetchone() is None:
        raise NotFoundError(f"no agent group {agent_group_id!r}")
    w = Wiring(
        id or new_id("mga", now), messaging_group_id, agent_group_id, session_mode, priority,
        iso(now), engage_mode, engage_pattern, sender_scope, ignored_message_policy,
    )  # fmt: skip
    with transaction(db):
        if get_wiring_for(db, messaging_group_id, agent_group_id) is not None:
            raise ConflictError(
                f"messaging group {messaging_group_id} is already wired to {agent_group_id}"
            )
        db.execute(
            "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, "
            "session_mode, priority, created_at, engage_mode, engage_pattern, sender_scope, "
            "ignored_message_policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (w.id, w.messaging_group_id, w.agent_group_id, w.session_mode, w.priority,
             w.created_at, w.engage_mode, w.engage_pattern, w.sender_scope,
             w.ignored_message_policy),
        )  # fmt: skip
        ensure_channel_destination(db, agent_group_id, messaging_group_id, now=now, notify=False)
    notify_changed(db, agent_group_id)
    return w


def get_wiring(db: sqlite3.Connection, id: str) -> Wiring | None:
    row = db.execute("SELECT * FROM messaging_group_agents WHERE id=?", (id,)).fetchone()
    return from_row(Wiring, row)


def get_wiring_for(
    db: sqlite3.Connection, messaging_group_id: str, agent_group_id: str
) -> Wiring | None:
    row = db.execute(
        "SELECT * FROM messaging_group_agents WHERE messaging_group_id=? AND agent_group_id=?",
        (messaging_group_id, agent_group_id),
    ).fetchone()
    return from_row(Wiring, row)


def wirings_for_chat(db: sqlite3.Connection, messaging_group_id: str) -> list[Wiring]:
    """The wirings of a chat, highest priority first (fan-out order)."""
    rows = db.execute(
        "SELECT * FROM messaging_group_agents WHERE messaging_group_id=? "
        "ORDER BY COALESCE(priority, 0) DESC, created_at, id",
        (messaging_group_id,),
    ).fetchall()
    return from_rows(Wiring, rows)


def list_wirings(db: sqlite3.Connection, agent_group_id: str | None = None) -> list[Wiring]:
    if agent_group_id is None:
        rows = db.execute("SELECT * FROM messaging_group_agents ORDER BY created_at, id")
    else:
        rows = db.execute(
            "SELECT * FROM messaging_group_agents WHERE agent_group_id=? ORDER BY created_at, id",
            (agent_group_id,),
        )
    return from_rows(Wiring, rows.fetchall())


def update_wiring(db: sqlite3.Connection, id: str, **changes: object) -> Wiring:
    w = get_wiring(db, id)
    if w is None:
        raise NotFoundError(f"no wiring {id!r}")
    allowed = {
        "engage_mode": ENGAGE_MODES, "sender_scope": SENDER_SCOPES,
        "ignored_message_policy": IGNORED_POLICIES, "session_mode": SESSION_MODES,
    }  # fmt: skip
    for key, value in changes.items():
        if key in allowed:
            _check(value if isinstance(value, str) else repr(value), allowed[key], key)
        elif key == "priority":
            if not isinstance(value, int):
                raise ValidationError("priority must be an integer")
        elif key == "engage_pattern":
            if value is not None:
                validate_pattern(str(value))
        else:
            raise ValidationError(f"unknown wiring field {key!r}")
    mode = changes.get("engage_mode", w.engage_mode)
    pattern = changes.get("engage_pattern", w.engage_pattern)
    if mode == "pattern" and not pattern:
        raise ValidationError("engage_mode 'pattern' needs an engage_pattern ('.' = always)")
    with transaction(db):
        for key, value in changes.items():
            db.execute(f"UPDATE messaging_group_agents SET {key}=? WHERE id=?", (value, id))
    out = get_wiring(db, id)
    assert out is not None
    notify_changed(db, out.agent_group_id)
    return out


def delete_wiring(db: sqlite3.Connection, id: str) -> None:
    w = get_wiring(db, id)
    if w is None:
        raise NotFoundError(f"no wiring {id!r}")
    with transaction(db):
        db.execute("DELETE FROM messaging_group_agents WHERE id=?", (id,))
    notify_changed(db, w.agent_group_id)
