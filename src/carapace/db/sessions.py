"""The ``sessions`` table: one conversation between a chat (or nothing) and an agent group."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.errors import NotFoundError, ValidationError
from carapace.timefmt import iso, new_id

CONTAINER_STATUSES = ("running", "idle", "stopped")


@dataclass(frozen=True)
class Session:
    id: str
    agent_group_id: str
    messaging_group_id: str | None
    thread_id: str | None
    agent_provider: str | None
    status: str | None
    container_status: str | None
    last_active: str | None
    created_at: str


def create_session(
    db: sqlite3.Connection,
    agent_group_id: str,
    messaging_group_id: str | None,
    thread_id: str | None = None,
    *,
    id: str | None = None,
    now: datetime | None = None,
) -> Session:
    s = Session(
        id or new_id("sess", now), agent_group_id, messaging_group_id, thread_id, None,
        "active", "stopped", iso(now), iso(now),
    )  # fmt: skip
    with transaction(db):
        db.execute(
            "INSERT INTO sessions (id, agent_group_id, messaging_group_id, thread_id, "
            "agent_provider, status, container_status, last_active, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (s.id, s.agent_group_id, s.messaging_group_id, s.thread_id, s.agent_provider,
             s.status, s.container_status, s.last_active, s.created_at),
        )  # fmt: skip
    return s


def get_session(db: sqlite3.Connection, id: str) -> Session | None:
    return from_row(Session, db.execute("SELECT * FROM sessions WHERE id=?", (id,)).fetchone())


def require_session(db: sqlite3.Connection, id: str) -> Session:
    s = get_session(db, id)
    if s is None:
        raise NotFoundError(f"no session {id!r}")
    return s


def find_session(
    db: sqlite3.Connection,
    agent_group_id: str,
    messaging_group_id: str | None,
    thread_id: str | None,
) -> Session | None:
    """The active session for exactly this (agent, chat, thread) key."""
    row = db.execute(
        "SELECT * FROM sessions WHERE agent_group_id=? AND messaging_group_id IS ? "
        "AND thread_id IS ? AND COALESCE(status, 'active')='active' "
        "ORDER BY created_at DESC LIMIT 1",
        (agent_group_id, messaging_group_id, thread_id),
    ).fetchone()
    return from_row(Session, row)


def list_sessions(
    db: sqlite3.Connection,
    *,
    agent_group_id: str | None = None,
    status: str | None = None,
    container_status: str | None = None,
) -> list[Session]:
    sql, args = "SELECT * FROM sessions WHERE 1=1", []
    for col, val in (
        ("agent_group_id", agent_group_id),
        ("COALESCE(status, 'active')", status),
        ("container_status", container_status),
    ):
        if val is not None:
            sql += f" AND {col}=?"
            args.append(val)
    return from_rows(Session, db.execute(sql + " ORDER BY created_at, id", args).fetchall())


def set_container_status(db: sqlite3.Connection, id: str, status: str) -> None:
    if status not in CONTAINER_STATUSES:
        raise ValidationError(f"container_status must be one of {', '.join(CONTAINER_STATUSES)}")
    db.execute("UPDATE sessions SET container_status=? WHERE id=?", (status, id))


def touch_session(db: sqlite3.Connection, id: str, *, now: datetime | None = None) -> None:
    db.execute("UPDATE sessions SET last_active=? WHERE id=?", (iso(now), id))


def close_session(db: sqlite3.Connection, id: str) -> None:
    require_session(db, id)
    db.execute("UPDATE sessions SET status='closed', container_status='stopped' WHERE id=?", (id,))


def mark_session_work(db: sqlite3.Connection, session_id: str, next_due: str) -> None:
    """Put the session in the sweep's work index (``carapace_session_work``), due no later
    than ``next_due`` (ISO); the sweep visits only indexed sessions."""
    db.execute(
        "INSERT INTO carapace_session_work (session_id, next_due) VALUES (?, ?) "
        "ON CONFLICT(session_id) DO UPDATE SET next_due=MIN(next_due, excluded.next_due)",
        (session_id, next_due),
    )
