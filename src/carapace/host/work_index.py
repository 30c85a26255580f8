"""Rebuild the sweep's work index from the session files at host start (issue 18, item 1).

The sweep and delivery visit only sessions listed in ``carapace_session_work``. That index
is carapace's own: a home last run by NanoClaw (or by an older carapace) can hold pending
messages, due one-off and recurring tasks and undelivered replies that the index does not
name, and they would wait for the next message routed into their session. So at every
start the host asks each active session's files what is there:

* ``inbound.db`` (the host's own file): the earliest ``process_after`` of a pending
  trigger row that is not a system row (a task due later is indexed for its time);
* ``outbound.db`` (the runner's): a highest seq above the delivery cursor means replies
  may wait for delivery; that session is due now.

The file reads run in a worker thread (``scan_sessions``); only the final index writes touch
the central DB, in one transaction. Sessions found with nothing to do are left alone. A file
that lacks one of the host's indexes (made by NanoClaw or an older carapace) gets them there
too, once: building one reads the whole table (~20 ms per 100,000 rows), which the event
loop's first open of the file would otherwise do.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from carapace.db.connection import connect, has_table, transaction
from carapace.db.session import (
    HOST_INDEXES,
    SessionPaths,
    open_inbound,
    peek_max_seq,
    trigger_clause,
)
from carapace.db.sessions import mark_session_work
from carapace.timefmt import iso, parse_ts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRef:
    session_id: str
    agent_group_id: str


def active_sessions(db: sqlite3.Connection) -> list[SessionRef]:
    rows = db.execute(
        "SELECT id, agent_group_id FROM sessions WHERE COALESCE(status, 'active') = 'active'"
    )
    return [SessionRef(r[0], r[1]) for r in rows]


def _inbound_due(paths: SessionPaths, now: datetime) -> tuple[datetime | None, int, bool]:
    """(earliest due time of a pending trigger row, delivery cursor, whether a host index
    is missing) from ``inbound.db``."""
    conn = connect(paths.inbound, "session", readonly=True)
    try:
        # one read transaction for the six reads: each one of its own looked for a hot
        # journal, and a journal that is not empty (PERSIST) is opened to be looked at
        conn.execute("BEGIN")
        due: datetime | None = None
        upgrade = False
        if has_table(conn, "messages_in"):
            have = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='messages_in'")}  # fmt: skip
            upgrade = not have >= HOST_INDEXES.keys()
            for (after,) in conn.execute(
                "SELECT process_after FROM messages_in WHERE status = 'pending' "
                f"{trigger_clause(conn)}AND kind != 'system'"
            ):
                when = _parse(after) or now
                due = when if due is None or when < due else due
        cursor = 0
        if has_table(conn, "carapace_delivery_cursor"):
            row = conn.execute("SELECT seq FROM carapace_delivery_cursor WHERE id=1").fetchone()
            cursor = int(row[0]) if row and row[0] is not None else 0
        return due, cursor, upgrade
    finally:
        conn.close()  # (ends the read transaction)


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        return None


def scan_sessions(
    data_dir: Path, sessions: Iterable[SessionRef], now: datetime
) -> dict[str, datetime]:
    """``{session id: next due}`` for the sessions whose files hold work (thread-safe: opens
    its own connections; a damaged file is logged and that session indexed due now)."""
    found: dict[str, datetime] = {}
    for ref in sessions:
        paths = SessionPaths.of(data_dir, ref.agent_group_id, ref.session_id)
        if not paths.inbound.exists():
            continue
        try:
            due, cursor, upgrade = _inbound_due(paths, now)
            if upgrade:
                _upgrade(paths, ref.session_id)
            if peek_max_seq(paths.outbound, "messages_out") > cursor:
                due = now
        except sqlite3.Error as exc:
            logger.warning("session %s: cannot read its files (%s); visiting it", ref.session_id,
                           exc)  # fmt: skip
            due = now
        if due is not None:
            found[ref.session_id] = due
    return found


def _upgrade(paths: SessionPaths, session_id: str) -> None:
    """Add the host's missing indexes (and note the file checked); a failure is left to the
    host's first open of the file."""
    try:
        open_inbound(paths).close()
    except (OSError, sqlite3.Error) as exc:
        logger.info("session %s: inbound.db not upgraded at start (%s)", session_id, exc)


def apply(db: sqlite3.Connection, found: dict[str, datetime]) -> int:
    """Index each session due no later than found (an earlier existing due time stays)."""
    with transaction(db):
        for sid, due in found.items():
            mark_session_work(db, sid, iso(due))
    return len(found)


class WorkMarks:
    """The host's writes to the work index, on the central DB connection it is given.

    A mark the central DB refuses (a full disk) is kept in memory, counted by :meth:`due`
    and written at the next chance: a session's work is never forgotten. Per session, a due
    the index is known to hold the session by (its ``next_due`` at or before it) is
    remembered, so a mark no earlier is not written again; only :meth:`set` moves a
    ``next_due`` later or drops it, and it updates that (issue 19: one central write per
    routed message fewer)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._unmarked: dict[str, str] = {}  # marks the central DB refused
        self._marked: dict[str, str] = {}  # a due the index holds each session by
        # sessions the sweep is looking at: [sweeps looking, earliest due asked meanwhile]
        self._watched: dict[str, list[Any]] = {}

    def watch(self, session_id: str) -> None:
        """The sweep begins to look at the session: the marks asked for from now on are
        kept for :meth:`unwatch` (a row written while the sweep reads the files off the
        event loop is not in what it read; its next due must not drop that row's)."""
        w = self._watched.setdefault(session_id, [0, None])
        w[0] += 1

    def unwatch(self, session_id: str) -> str | None:
        """The sweep is done with the session: the earliest due marked since ``watch``."""
        w = self._watched.get(session_id)
        if w is None:
            return None
        w[0] -= 1
        if w[0] <= 0:
            del self._watched[session_id]
        return w[1]  # type: ignore[no-any-return]

    def mark(self, session_id: str, next_due: str) -> None:
        """Put the session in the index, due no later than ``next_due``."""
        w = self._watched.get(session_id)
        if w is not None and (w[1] is None or next_due < w[1]):
            w[1] = next_due
        old = self._unmarked.get(session_id)
        if old is not None and old < next_due:
            next_due = old
        held = self._marked.get(session_id)
        if old is None and held is not None and held <= next_due:
            return  # the index holds the session due no later already
        try:
            mark_session_work(self.db, session_id, next_due)
        except sqlite3.OperationalError as exc:
            if old is None:
                logger.error("work mark of session %s kept in memory: %s", session_id, exc)
            self._unmarked[session_id] = next_due
            return
        self._unmarked.pop(session_id, None)
        if self.db.in_transaction:  # a rollback could still undo it: not known to hold
            self._marked.pop(session_id, None)
        else:
            self._marked[session_id] = min(next_due, held) if held is not None else next_due

    def set(self, session_id: str, next_due: str | None) -> None:
        """The session's ``next_due`` as given (later, or None: out of the index)."""
        self._marked.pop(session_id, None)  # until the write below is known to hold
        if next_due is None:
            self.db.execute("DELETE FROM carapace_session_work WHERE session_id=?", (session_id,))
        else:
            self.db.execute(
                "INSERT INTO carapace_session_work (session_id, next_due) VALUES (?, ?) "
                "ON CONFLICT(session_id) DO UPDATE SET next_due=excluded.next_due",
                (session_id, next_due),
            )
            if not self.db.in_transaction:  # a rollback could still undo it otherwise
                self._marked[session_id] = next_due

    def due(self, now: datetime) -> list[str]:
        """The sessions due at ``now``, earliest first (the refused marks last)."""
        self._flush()
        rows = self.db.execute(
            "SELECT session_id FROM carapace_session_work WHERE next_due <= ? ORDER BY next_due",
            (iso(now),),
        )
        out = [r[0] for r in rows]
        cut = iso(now)
        return out + [sid for sid, due in self._unmarked.items() if due <= cut and sid not in out]

    def next_due(self) -> str | None:
        row = self.db.execute("SELECT MIN(next_due) FROM carapace_session_work").fetchone()
        dues = [d for d in (row[0] if row is not None else None, *self._unmarked.values()) if d]
        return min(dues) if dues else None

    def _flush(self) -> None:
        for sid, due in list(self._unmarked.items()):
            self.mark(sid, due)
            if sid in self._unmarked:
                return  # still refused: the others would be too
