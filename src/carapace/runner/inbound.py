"""Reading ``inbound.db`` (read-only): pending rows, destinations, routing, lookups.

One read-only connection for the runner's life (issue 19), opened lazily, pragmas set once.
It runs in autocommit mode, so every read is its own read transaction and sees every commit
the host made before it (W-7: NanoClaw's singleton kept a stale view; here no transaction
is ever left open). Spec §4.1's concern (a long-lived connection holding an old snapshot on
virtiofs/NFS) is about a container and its host on two kernels; carapace's runner shares the
host's kernel and page cache (bubblewrap or a plain subprocess), where SQLite's change
counter check at each read transaction is exact. A read that fails reopens the file.

The pending query fixes W-4/W-5: it returns *every* due pending row oldest first; the
caller filters out rows it has acknowledged and only then applies the batch limit, so an
acknowledged-but-not-yet-synced row never hides an older one.

A read that meets the host's commit in progress (``SQLITE_BUSY``: the rollback journal
keeps readers out while the database file is written) is retried here every
``BUSY_RETRY_S``, up to the usual busy timeout, instead of in SQLite's busy handler, whose
first sleeps are 1, 2 and 5 ms: a session-DB commit lasts about a millisecond, and the row
the runner waits for is usually the one being committed (issue 19).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property

from carapace.db.connection import BUSY_TIMEOUT_MS, column_names, connect, has_table, is_busy
from carapace.db.session import SessionPaths
from carapace.jsonutil import loads_or
from carapace.record import field, record
from carapace.timefmt import parse_ts, sqlite_ts

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any, Concatenate, ParamSpec, TypeVar

    _P = ParamSpec("_P")
    _T = TypeVar("_T")

PENDING_SCAN_LIMIT = 1000
# finished ids to skip that are read whole anyway (one query, not ids then rows): the usual
# case is the last turn's row, often copied by the host already (then not even pending)
SKIP_READ_WHOLE = 4
BUSY_RETRY_S = 0.0003  # between tries of a read that found the host committing
BUSY_TIMEOUT_S = BUSY_TIMEOUT_MS / 1000  # then the read fails, as SQLite's handler would


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _retried(
    read: Callable[Concatenate[Inbound, _P], _T],
) -> Callable[Concatenate[Inbound, _P], _T]:
    """Run a read again, every ``BUSY_RETRY_S``, while the file is busy (for at most
    ``BUSY_TIMEOUT_S``; then the busy error is raised). Reads only: running one twice is
    harmless."""

    @functools.wraps(read)
    def wrapper(self: Inbound, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        deadline: float | None = None
        while True:
            try:
                return read(self, *args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + BUSY_TIMEOUT_S
                if now >= deadline:
                    raise
            _sleep(BUSY_RETRY_S)

    return wrapper


@record(frozen=True)
class InRow:
    id: str
    seq: int | None
    kind: str
    timestamp: str
    status: str | None
    process_after: str | None
    recurrence: str | None
    series_id: str | None
    trigger: int
    platform_id: str | None
    channel_type: str | None
    thread_id: str | None
    content: str
    on_wake: int = 0

    @cached_property
    def data(self) -> dict[str, Any]:
        """The content as an object; malformed JSON becomes ``{"text": <raw>}`` (spec §2.3)."""
        value = loads_or(self.content, None)
        if isinstance(value, dict):
            return value
        return {"text": self.content}

    @property
    def routing(self) -> Routing:
        return Routing(self.channel_type, self.platform_id, self.thread_id)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> InRow:
        keys = row.keys()
        trig = row["trigger"] if "trigger" in keys else 1
        return cls(
            id=row["id"],
            seq=row["seq"],
            kind=row["kind"],
            timestamp=row["timestamp"],
            status=row["status"],
            process_after=row["process_after"],
            recurrence=row["recurrence"] if "recurrence" in keys else None,
            series_id=row["series_id"] if "series_id" in keys else None,
            trigger=1 if trig is None else int(trig),
            platform_id=row["platform_id"],
            channel_type=row["channel_type"],
            thread_id=row["thread_id"],
            content=row["content"],
            on_wake=int(row["on_wake"] or 0) if "on_wake" in keys else 0,
        )


def is_host_note(row: InRow, agent_group_id: str) -> bool:
    """A host/system note (spec §2.10): on the agent channel, from the agent's own group or
    sent by ``system``. It is nobody's message to answer: replies go to the session's chat."""
    if row.channel_type != "agent":
        return False
    if row.platform_id == agent_group_id:
        return True
    return "system" in (row.data.get("senderId"), row.data.get("sender"))


@record(frozen=True)
class Routing:
    channel_type: str | None = None
    platform_id: str | None = None
    thread_id: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.channel_type and self.platform_id)

    def same_chat(self, other: Routing) -> bool:
        return not self.empty and (self.channel_type, self.platform_id) == (
            other.channel_type,
            other.platform_id,
        )


@record(frozen=True)
class Destination:
    name: str
    display_name: str | None
    type: str
    channel_type: str | None
    platform_id: str | None
    agent_group_id: str | None

    def routing(self) -> Routing:
        if self.type == "agent":
            return Routing("agent", self.agent_group_id, None)
        return Routing(self.channel_type, self.platform_id, None)


@record(frozen=True)
class Poll:
    """What :meth:`Inbound.poll` read: the due rows, and with them (only when there are
    rows) the session's destinations and routing as of the same moment."""

    rows: list[InRow]
    destinations: list[Destination] = field(default_factory=list)
    routing: Routing = Routing()
    # every due pending id, skipped ones too, when the read saw them all (not cut by the
    # scan's limit): a finished id not among them was copied by the host (runner/loop.py)
    pending: frozenset[str] | None = None


_DUE = (
    "FROM messages_in WHERE status = 'pending' AND "
    "(process_after IS NULL OR datetime(process_after) <= datetime(?)) "
    "ORDER BY seq ASC LIMIT ?"
)


def _due(now: datetime) -> tuple[str, int]:
    return (sqlite_ts(now), PENDING_SCAN_LIMIT)


@contextmanager
def _reading(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around several reads (ended however they end: a reader's
    lock is never left held)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


class Inbound:
    """Read-only access to one session's ``inbound.db``."""

    def __init__(self, paths: SessionPaths) -> None:
        self.paths = paths
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        # tables seen in this connection's file: the host adds tables, never drops one, so
        # a table once present is not looked up again (a replaced file: a new connection)
        self._tables: set[str] = set()
        self._top: int | None = None  # messages_in's highest seq at the last look

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                conn = connect(self.paths.inbound, "session", readonly=True,
                               check_same_thread=False)  # fmt: skip
                conn.execute("PRAGMA busy_timeout = 0")  # busy reads are retried (_retried)
                self._conn = conn
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                if not is_busy(exc):
                    self.close()  # a replaced or damaged file: the next read opens it again
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._tables.clear()

    def _has(self, conn: sqlite3.Connection, table: str) -> bool:
        if table in self._tables:
            return True
        if has_table(conn, table):
            self._tables.add(table)
            return True
        return False

    # --- the queue --------------------------------------------------------------------------

    @_retried
    def poll(self, now: datetime, skip: Collection[str] = ()) -> Poll:
        """Every pending row that is due at ``now``, in seq order (oldest first), but those
        whose id is in ``skip`` (rows the runner knows it has finished: the host copies
        their acks into this file in batches, so until then they are still pending here);
        and, when there are any, the session's destinations, routing and highest seq.

        All in one read transaction: what a turn reads of this file before its model call,
        in one lock of the file instead of three. Each read of a file the host commits to
        may meet a commit and wait it out (issue 19: a turn's second and third reads met
        the host's next commit about every other turn). With more than
        :data:`SKIP_READ_WHOLE` ids to skip, the ids come first and only the other rows are
        read whole: up to 64 finished rows wait for the host's copy, and reading them whole
        at every poll cost ~0.1-0.3 ms; with a few, one query (the second one cost a turn
        ~20 µs)."""
        with self._open() as conn, _reading(conn):
            rows, pending = self._pending(conn, now, skip)
            if not rows:
                return Poll([], pending=pending)
            dests, routing = self._destinations(conn), self._session_routing(conn)
            self._top = self._max_seq(conn)
        return Poll([InRow.from_row(r) for r in rows], dests, routing, pending)

    def _pending(self, conn: sqlite3.Connection, now: datetime, skip: Collection[str],
                 ) -> tuple[list[sqlite3.Row], frozenset[str] | None]:  # fmt: skip
        """The due rows not in ``skip``, and every due id when the scan saw them all."""
        due = _due(now)
        if len(skip) <= SKIP_READ_WHOLE:  # (none, or a few: read whole, dropped here)
            rows = conn.execute(f"SELECT * {_DUE}", due).fetchall()
            pending = frozenset(r["id"] for r in rows) if len(rows) < due[1] else None
            return [r for r in rows if r["id"] not in skip] if skip else rows, pending
        every = [i for (i,) in conn.execute(f"SELECT id {_DUE}", due)]
        pending = frozenset(every) if len(every) < due[1] else None
        ids = [i for i in every if i not in skip]
        if not ids:
            return [], pending
        return conn.execute(
            f"SELECT * FROM messages_in WHERE id IN ({','.join('?' * len(ids))}) "
            "ORDER BY seq ASC", ids,
        ).fetchall(), pending  # fmt: skip

    @_retried
    def next_due(self, now: datetime) -> datetime | None:
        """The earliest ``process_after`` of a pending row that is not due yet."""
        with self._open() as conn:
            rows = conn.execute(
                "SELECT process_after FROM messages_in WHERE status = 'pending' AND "
                "process_after IS NOT NULL AND datetime(process_after) > datetime(?)",
                (sqlite_ts(now),),
            ).fetchall()
        times: list[datetime] = []
        for (value,) in rows:
            try:
                times.append(parse_ts(value))
            except ValueError:
                continue
        return min(times) if times else None

    @_retried
    def question_response(self, question_id: str) -> InRow | None:
        """The pending ``question_response`` row for ``question_id`` (parsed, not LIKE-matched)."""
        with self._open() as conn:
            rows = conn.execute(
                "SELECT * FROM messages_in WHERE kind = 'system' AND status = 'pending' "
                "AND instr(content, ?) > 0 ORDER BY seq ASC",
                (question_id,),
            ).fetchall()
        for r in rows:
            row = InRow.from_row(r)
            data = row.data
            if data.get("type") == "question_response" and data.get("questionId") == question_id:
                return row
        return None

    # --- destinations and routing ------------------------------------------------------------

    @_retried
    def destinations(self) -> list[Destination]:
        with self._open() as conn:
            return self._destinations(conn)

    @_retried
    def session_routing(self) -> Routing:
        with self._open() as conn:
            return self._session_routing(conn)

    def _destinations(self, conn: sqlite3.Connection) -> list[Destination]:
        if not self._has(conn, "destinations"):
            return []
        rows = conn.execute("SELECT * FROM destinations ORDER BY name").fetchall()
        return [
            Destination(
                r["name"],
                r["display_name"],
                r["type"],
                r["channel_type"],
                r["platform_id"],
                r["agent_group_id"],
            )
            for r in rows
        ]

    def _session_routing(self, conn: sqlite3.Connection) -> Routing:
        if not self._has(conn, "session_routing"):
            return Routing()
        row = conn.execute(
            "SELECT channel_type, platform_id, thread_id FROM session_routing WHERE id = 1"
        ).fetchone()
        if row is None:
            return Routing()
        return Routing(row["channel_type"], row["platform_id"], row["thread_id"])

    @_retried
    def latest_from(self, channel_type: str, platform_id: str) -> InRow | None:
        """The newest row (any status or kind) from that channel or agent (spec §5.4)."""
        with self._open() as conn:
            row = conn.execute(
                "SELECT * FROM messages_in WHERE channel_type = ? AND platform_id = ? "
                "ORDER BY seq DESC LIMIT 1",
                (channel_type, platform_id),
            ).fetchone()
        return InRow.from_row(row) if row is not None else None

    @_retried
    def by_seq(self, seq: int) -> InRow | None:
        with self._open() as conn:
            row = conn.execute("SELECT * FROM messages_in WHERE seq = ?", (seq,)).fetchone()
        return InRow.from_row(row) if row is not None else None

    @_retried
    def by_id(self, message_id: str) -> InRow | None:
        with self._open() as conn:
            row = conn.execute("SELECT * FROM messages_in WHERE id = ?", (message_id,)).fetchone()
        return InRow.from_row(row) if row is not None else None

    @property
    def agent_group_id(self) -> str:
        """The session's agent group (sessions live in ``<agent_group_id>/<session_id>/``)."""
        return self.paths.root.parent.name

    def answers_note(self, origin: Routing, trigger_id: str | None) -> bool:
        """Whether a turn with this origin and triggering row answers a host/system note."""
        if origin.channel_type != "agent":
            return False
        if origin.platform_id == self.agent_group_id:
            return True
        row = self.by_id(trigger_id) if trigger_id else None
        return row is not None and is_host_note(row, self.agent_group_id)

    @_retried
    def delivered_platform_id(self, message_out_id: str) -> str | None:
        with self._open() as conn:
            if not self._has(conn, "delivered"):
                return None
            cols = column_names(conn, "delivered")
            if "platform_message_id" not in cols:
                return None
            row = conn.execute(
                "SELECT platform_message_id FROM delivered WHERE message_out_id = ?",
                (message_out_id,),
            ).fetchone()
        return row[0] if row is not None and row[0] else None

    @_retried
    def is_delivered(self, message_out_id: str) -> bool:
        with self._open() as conn:
            if not self._has(conn, "delivered"):
                return False
            row = conn.execute(
                "SELECT 1 FROM delivered WHERE message_out_id = ?", (message_out_id,)
            ).fetchone()
        return row is not None

    @_retried
    def tasks(self, status: str | None) -> list[sqlite3.Row]:
        """One row per task series (the newest occurrence), oldest due first (spec §8.9)."""
        where = "status = ?" if status else "status IN ('pending', 'paused')"
        params: tuple[Any, ...] = (status,) if status else ()
        with self._open() as conn:
            return conn.execute(
                "SELECT COALESCE(series_id, id) AS id, status, process_after, recurrence, "
                f"content, MAX(seq) AS seq FROM messages_in WHERE kind = 'task' AND {where} "
                "GROUP BY COALESCE(series_id, id) ORDER BY process_after ASC",
                params,
            ).fetchall()

    @_retried
    def task_exists(self, task_id: str) -> bool:
        with self._open() as conn:
            row = conn.execute(
                "SELECT 1 FROM messages_in WHERE kind = 'task' AND (id = ? OR series_id = ?) "
                "LIMIT 1",
                (task_id, task_id),
            ).fetchone()
        return row is not None

    @_retried
    def max_seq(self) -> int:
        with self._open() as conn:
            self._top = self._max_seq(conn)
            return self._top

    def known_max(self) -> int:
        """``messages_in``'s highest seq as of this reader's last look at it (the poll that
        found the turn's rows), read now only when it never looked: what the runner's seq
        allocation takes for the inbound side (compat.md D4), with no read of the host's
        file inside the runner's write transaction, where it met the host's commits."""
        return self._top if self._top is not None else self.max_seq()

    @staticmethod
    def _max_seq(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_in").fetchone()[0])
