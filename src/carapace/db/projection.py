"""Writing the central ACL and routing into a session's ``inbound.db`` (spec/host.md §4.5).

``project_group`` is what the direct admin context's projection hook calls (no host
running): it brings the ``destinations`` table of every active session of the agent group up
to date. A running host projects a change only into the sessions whose runner is alive,
off its event loop, and the others project on wake (host/wake_files.py; issue 19). Either
way a session whose rows are already right gets no write.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from carapace.db.connection import transaction
from carapace.db.destinations import ProjectedDestination, projection
from carapace.db.session import SessionPaths, open_inbound
from carapace.db.sessions import Session, list_sessions

logger = logging.getLogger(__name__)


def write_destinations(db: sqlite3.Connection, data_dir: Path, session: Session) -> bool:
    """Bring the session's ``destinations`` rows up to date; False when its folder does not
    exist."""
    paths = SessionPaths.of(data_dir, session.agent_group_id, session.id)
    if not paths.inbound.exists():
        return False
    write_rows(paths, projection(db, session.agent_group_id))
    return True


def write_rows(paths: SessionPaths, rows: list[ProjectedDestination]) -> bool:
    """Write ``rows`` as the session's ``destinations`` only when they differ from what is
    there (no commit otherwise: issue 19). True when it wrote. Thread-safe (its own
    connection)."""
    conn = open_inbound(paths)
    try:
        return write_rows_on(conn, rows)
    finally:
        conn.close()


def write_rows_on(conn: sqlite3.Connection, rows: list[ProjectedDestination]) -> bool:
    """:func:`write_rows` on an open ``inbound.db`` connection."""
    want = sorted(
        (r.name, r.display_name, r.type, r.channel_type, r.platform_id, r.agent_group_id)
        for r in rows
    )
    have = sorted(
        tuple(r)
        for r in conn.execute(
            "SELECT name, display_name, type, channel_type, platform_id, agent_group_id "
            "FROM destinations"
        )
    )
    if have == want:
        return False
    with transaction(conn):
        conn.execute("DELETE FROM destinations")
        conn.executemany(
            "INSERT INTO destinations (name, display_name, type, channel_type, platform_id, "
            "agent_group_id) VALUES (?, ?, ?, ?, ?, ?)",
            want,
        )
    return True


def write_routing(db: sqlite3.Connection, data_dir: Path, session: Session) -> bool:
    """Set ``session_routing`` row 1 to the session's chat and thread (all NULL if none)."""
    paths = SessionPaths.of(data_dir, session.agent_group_id, session.id)
    if not paths.inbound.exists():
        return False
    write_routing_row(paths, routing_of(db, session))
    return True


def routing_of(
    db: sqlite3.Connection, session: Session
) -> tuple[str | None, str | None, str | None]:
    """(channel type, platform id, thread id) of the session's chat (all None if none)."""
    channel_type = platform_id = None
    if session.messaging_group_id is not None:
        mg = db.execute(
            "SELECT channel_type, platform_id FROM messaging_groups WHERE id=?",
            (session.messaging_group_id,),
        ).fetchone()
        if mg is not None:
            channel_type, platform_id = mg["channel_type"], mg["platform_id"]
    return channel_type, platform_id, session.thread_id


def write_routing_row(
    paths: SessionPaths, routing: tuple[str | None, str | None, str | None]
) -> bool:
    """Write ``session_routing`` row 1 unless it holds ``routing`` already (thread-safe)."""
    channel_type, platform_id, thread_id = routing
    conn = open_inbound(paths)
    try:
        row = conn.execute(
            "SELECT channel_type, platform_id, thread_id FROM session_routing WHERE id=1"
        ).fetchone()
        if row is not None and tuple(row) == routing:
            return False
        with transaction(conn):
            conn.execute(
                "INSERT INTO session_routing (id, channel_type, platform_id, thread_id) "
                "VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "channel_type=excluded.channel_type, platform_id=excluded.platform_id, "
                "thread_id=excluded.thread_id",
                (channel_type, platform_id, thread_id),
            )
    finally:
        conn.close()
    return True


def project_group(db: sqlite3.Connection, data_dir: Path, agent_group_id: str) -> int:
    """Refresh ``destinations`` in every active session of the group; returns how many."""
    n = 0
    for session in list_sessions(db, agent_group_id=agent_group_id, status="active"):
        try:
            if write_destinations(db, data_dir, session):
                n += 1
        except sqlite3.Error:
            logger.exception("destinations projection failed for session %s", session.id)
    return n
