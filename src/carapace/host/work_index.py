"""Rebuild the sweep's work index (``carapace_session_work``) from the session files.

The index is carapace's own; NanoClaw neither reads nor writes it. A home that NanoClaw ran
(or that was copied in) can hold pending inbound rows, due one-off or recurring tasks and
undelivered ``messages_out`` rows with no index entry, and the sweep would never visit
them. At every host start :func:`scan_work` looks at every active session's files and
returns when each is next due; the host then merges that into the index (earlier wins).

:func:`scan_work` opens its own read-only connections and is meant to run in a worker
thread (``asyncio.to_thread``); the central DB is read through a connection of its own.
``outbound.db`` is agent-written: it is opened read-only, only if it is a regular file
(never through a symlink), and only ``messages_out.id`` is read.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from datetime import datetime
from pathlib import Path

from carapace.db.session import SessionPaths
from carapace.timefmt import iso, parse_ts

logger = logging.getLogger(__name__)


def _open_ro(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to a regular file, never following a link."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        conn = sqlite3.connect(f"file:{path.as_posix()}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 2000")
        return conn
    except sqlite3.Error:
        return None


def session_next_due(paths: SessionPaths, now: datetime) -> datetime | None:
    """When this session next needs the sweep: ``now`` for work due or undelivered, the
    earliest future ``process_after`` of a pending row, None when there is nothing."""
    inb = _open_ro(paths.inbound)
    if inb is None:
        return None
    try:
        nxt: datetime | None = None
        try:
            rows = inb.execute(
                "SELECT process_after FROM messages_in WHERE status='pending' AND kind != 'system'"
            ).fetchall()
            # a recurring series whose last occurrence ended: the recurrence hook needs a visit
            series = inb.execute(
                "SELECT 1 FROM messages_in WHERE recurrence IS NOT NULL AND recurrence != '' "
                "AND status != 'pending' LIMIT 1"
            ).fetchone()
            delivered = {r[0] for r in inb.execute("SELECT message_out_id FROM delivered")}
        except sqlite3.Error as exc:
            logger.warning("work index: %s unreadable (%s); visiting it", paths.inbound, exc)
            return now
        if series is not None:
            return now
        for (after,) in rows:
            when = _ts(after)
            if when is None or when <= now:
                return now
            if nxt is None or when < nxt:
                nxt = when
    finally:
        inb.close()
    if _has_undelivered(paths.outbound, delivered):
        return now
    return nxt


def _has_undelivered(path: Path, delivered: set[str]) -> bool:
    out = _open_ro(path)
    if out is None:
        return False
    try:
        rows = out.execute("SELECT id FROM messages_out")
        return any(r[0] not in delivered for r in rows)
    except sqlite3.Error:
        return False
    finally:
        out.close()


def _ts(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        return None


def scan_work(central: Path, data_dir: Path, now: datetime) -> list[tuple[str, str]]:
    """(session id, next due ISO) for every active session with work on disk."""
    db = sqlite3.connect(f"file:{central.as_posix()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        sessions = db.execute(
            "SELECT id, agent_group_id FROM sessions WHERE COALESCE(status, 'active') = 'active'"
        ).fetchall()
    finally:
        db.close()
    found: list[tuple[str, str]] = []
    for sid, agid in sessions:
        if not isinstance(sid, str) or not isinstance(agid, str):
            continue
        due = session_next_due(SessionPaths.of(data_dir, agid, sid), now)
        if due is not None:
            found.append((sid, iso(due)))
    return found
