"""Reading an agent-written ``outbound.db`` defensively (DESIGN §5; issue 12 item 7).

The runner writes ``outbound.db``, so the agent can too, schema included: a view named
``messages_out`` (a recursive CTE), a trigger, a generated column or a virtual table is code
the host would run while it reads. One such file froze a host for ~13 minutes when it was
read with blocking calls on the event loop. So every host access to an ``outbound.db`` goes
through this module:

* the file is opened only if it is a regular file reached without a link (``safefs``; the
  SQLite URI adds ``nofollow=1``), read-only with ``query_only`` (the one writer, the
  claim reset after a runner died, opens it read-write inside ``BEGIN IMMEDIATE``);
* ``PRAGMA trusted_schema=OFF``, then ``sqlite_master`` is compared with what the runner
  creates (:func:`check_schema`): only the four runner tables with their known columns
  (older NanoClaw shapes included), only their automatic indexes; no view, trigger,
  user index, virtual table, generated column or other object. Anything else refuses the
  whole file with an :class:`OutboxRefused` (checked in the same transaction as the read);
* every read has a bound on work: a SQLite progress handler aborts it after a budget of
  wall time, queries carry a ``LIMIT``, and text fields are size-capped in SQL;
* the host's async code runs these reads on a small thread pool with a timeout
  (``host/outbox_pool.py``), never on the event loop. The one synchronous call site left (ack
  lookups of the task sweep hook for rows the sweep's own off-loop read did not cover) uses
  :data:`INLINE_BUDGET_S` (250 ms) on indexed lookups, which take well under 1 ms.

Persistent connections (issue 19). While a session has a live runner the host keeps one
read-only connection to its ``outbound.db`` (:func:`keep` / :func:`release`) instead of
opening, pragma-setting and schema-checking the file on every read. The defences hold per
read: the file is re-checked as a regular file reached without a link and compared (device,
inode) with the one the connection has open, a replaced file gets a fresh connection and a
full check; every read runs in its own transaction whose first step reads the schema cookie
(``PRAGMA schema_version``) and runs :func:`check_schema` again whenever it differs from
the value last checked (SQLite reloads its schema only when that cookie changes, so the
schema it uses is always one that passed the check); the progress-handler budget is armed
per read; any error closes the connection. Only worker-thread reads use it (a lock per
file); writes and inline reads open their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from carapace import safefs
from carapace.db.connection import (
    BUSY_TIMEOUT_MS,
    OUTBOUND_JOURNAL_MODE,
    is_busy,
    session_write_pragmas,
)
from carapace.errors import ValidationError

logger = logging.getLogger(__name__)

T = TypeVar("T")
OutRow = dict[str, Any]  # one messages_out row as read_rows returns it

READ_BUDGET_S = 0.5  # wall time one worker read may take before SQLite aborts it
INLINE_BUDGET_S = 0.25  # the few indexed lookups still made on the event loop (schema-checked,
# so legit ones take microseconds; generous so a loaded machine never reads "refused")
BUSY_WAIT_MS = 1000  # a runner's write lock is waited for at most this long
# A read on the reader pool waits this long for the lock in its thread, then gives the
# worker back and tries again after a pause (``outbox_pool``), up to BUSY_WAIT_MS in all:
# an agent keeping its outbound.db locked would otherwise hold a worker that every
# session's delivery shares (a runner's commit takes ~1 ms; its end wakes delivery anyway).
BUSY_TRY_MS = 20
BUSY_RETRY_S = 0.0003  # between tries of a kept connection's read that met a runner commit
BUSY_RETRY_MAX_S = 0.01  # the wait doubles up to this (a lock held on purpose)
MAX_ROWS = 500  # outbound rows per delivery read
MAX_IDS = 500
MAX_CONTENT_BYTES = 4 * 1024 * 1024
# What the host's JSON parse of a row's content may cost on the event loop, where it is
# sent: content up to CHEAP_CONTENT_BYTES parses in ~2 ms whatever it holds; larger content
# may hold at most MAX_CONTENT_COMMAS commas (each JSON value past a container's first
# needs one: 4 MiB of prose parses in ~6 ms, 4 MiB of `[0,0,…]` took 135 ms). Counted by
# SQLite in the reader's thread (it gives the GIL up), only for larger content.
CHEAP_CONTENT_BYTES = 64 * 1024
MAX_CONTENT_COMMAS = 65_536
# The content one delivery read returns at most (characters; at least its first row):
# 500 rows of 4 MiB each would have been 2 GiB in the host's memory. The rest is read by
# the pass that follows.
MAX_READ_CONTENT = 16 * 1024 * 1024
MAX_FIELD_BYTES = 1024  # id, addresses, timestamps
PROGRESS_OPS = 1000  # SQLite VM instructions between two budget checks

# The runner's tables (db/session.py OUTBOUND_SCHEMA) and the columns each may have:
# (required, optional). Optional ones are what older NanoClaw files lack.
TABLES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "messages_out": (
        frozenset(
            {
                "id",
                "seq",
                "in_reply_to",
                "timestamp",
                "deliver_after",
                "recurrence",
                "kind",
                "platform_id",
                "channel_type",
                "thread_id",
                "content",
            }
        ),
        frozenset(),
    ),
    "processing_ack": (frozenset({"message_id", "status", "status_changed"}), frozenset()),
    "session_state": (frozenset({"key", "value"}), frozenset({"updated_at"})),
    "container_state": (
        frozenset(
            {"id", "current_tool", "tool_declared_timeout_ms", "tool_started_at", "updated_at"}
        ),
        frozenset(),
    ),
}


class OutboxRefused(ValidationError):
    """An ``outbound.db`` the host will not read (wrong schema, a link, too much work)."""

    code = "outbox-refused"


class OutboxBusy(OutboxRefused):
    """The runner's (or its agent's) lock on ``outbound.db`` outlasted this try's wait."""


# set in the reader pool's threads: their reads wait only BUSY_TRY_MS per try in the
# thread; outbox_pool.OutboxReader.call tries again with the worker given back
_pool_thread = threading.local()


def in_pool() -> None:
    """The reader pool's thread initializer (``host/outbox_pool.py``)."""
    _pool_thread.on = True


def check_schema(conn: sqlite3.Connection) -> None:
    """``OutboxRefused`` unless ``sqlite_master`` holds exactly the runner's objects."""
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master LIMIT 64"
    ).fetchall()
    if len(objects) >= 64:
        raise OutboxRefused("outbound.db has too many schema objects")
    for kind, name, table, sql in objects:
        if kind == "table" and name in TABLES:
            if not str(sql or "").lstrip().upper().startswith("CREATE TABLE"):
                raise OutboxRefused(f"outbound.db table {name!r} is not a plain table")
            required, optional = TABLES[name]
            cols = conn.execute(f"PRAGMA table_xinfo({name})").fetchall()
            names = {c[1] for c in cols}
            if any(c[6] != 0 for c in cols):  # hidden: generated or virtual-table columns
                raise OutboxRefused(f"outbound.db table {name!r} has generated columns")
            if not required <= names or not names <= required | optional:
                raise OutboxRefused(f"outbound.db table {name!r} has unexpected columns")
        elif kind == "index" and sql is None and table in TABLES:
            continue  # the automatic index of a PRIMARY KEY / UNIQUE column
        else:
            raise OutboxRefused(f"outbound.db has an unexpected {kind} {name!r}")
    if "messages_out" not in {o[1] for o in objects if o[0] == "table"}:
        raise OutboxRefused("outbound.db has no messages_out table")


def _check_file(path: Path) -> tuple[int, int]:
    """A regular file reached without following a link (``FileNotFoundError`` if none);
    returns its (device, inode).

    Two ``lstat`` calls: of the session folder (a real folder, not a link; the folders
    above it are the host's) and of the file (a regular file, not a link). The file is
    never opened: POSIX locks belong to the process, and closing a descriptor opened on
    the file would drop every lock this process holds on it, so a read under way on
    another thread lost its shared lock and the runner could commit under it (a torn
    read). (An ``openat2`` through ctypes cost ~40 µs here, on every reply's path.)"""
    folder = os.lstat(path.parent).st_mode
    if not stat.S_ISDIR(folder):
        raise safefs.UnsafePathError(f"refused {path.parent.name!r}: not a folder (a link?)")
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise safefs.UnsafePathError(f"refused {path.name!r}: a symbolic link is in the way")
    if not stat.S_ISREG(st.st_mode):
        raise OutboxRefused("outbound.db is not a regular file")
    return st.st_dev, st.st_ino


@dataclass
class _Kept:
    """One persistent read-only connection (see the module docstring)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: sqlite3.Connection | None = None
    ident: tuple[int, int] | None = None
    schema: int | None = None  # the schema cookie last checked
    deadline: float = 0.0
    retired: bool = False  # released while a read was in progress

    def drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
        self.conn, self.ident, self.schema = None, None, None


_kept: dict[str, _Kept] = {}
_kept_guard = threading.Lock()


def keep(path: Path) -> None:
    """Keep a persistent connection to ``path`` for worker-thread reads (a live session)."""
    with _kept_guard:
        _kept.setdefault(str(path), _Kept())


def release(path: Path) -> None:
    """Close and forget the persistent connection to ``path`` (the session's runner ended)."""
    with _kept_guard:
        entry = _kept.pop(str(path), None)
    if entry is not None:
        if entry.lock.acquire(blocking=False):  # never wait on the event loop for a read
            try:
                entry.drop()
            finally:
                entry.lock.release()
        else:
            entry.retired = True  # the read in progress closes it when done


def kept_count() -> int:
    return len(_kept)


def _open_ro(path: Path, busy: int, check: Callable[[], int]) -> sqlite3.Connection:
    uri = f"file:{quote(str(path))}?mode=ro&nofollow=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy / 1000,
                               check_same_thread=False)  # fmt: skip
    except sqlite3.Error as exc:
        raise OutboxRefused(f"outbound.db cannot be opened: {exc}") from None
    conn.set_progress_handler(check, PROGRESS_OPS)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA mmap_size = 0")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise OutboxRefused(f"outbound.db: {exc}") from None
    return conn


def _begin(conn: sqlite3.Connection, busy_ms: int) -> int:
    """BEGIN and the transaction's first read (the schema cookie), which takes the shared
    lock: while the runner commits, tried again every ``BUSY_RETRY_S`` for up to
    ``busy_ms``, not in SQLite's busy handler, whose first sleeps are 1, 2 and 5 ms (a
    reader woken by the runner's claim commit met its reply commit ~1.5 times a round
    trip). The wait doubles from try to try up to ``BUSY_RETRY_MAX_S``: a lock the agent
    holds on purpose costs the host a few dozen tries a second, not thousands. Once the
    shared lock is held, the transaction's later reads cannot be busy."""
    deadline = time.monotonic() + min(busy_ms, BUSY_TIMEOUT_MS) / 1000
    wait = BUSY_RETRY_S
    while True:
        conn.execute("BEGIN")
        try:
            return int(conn.execute("PRAGMA schema_version").fetchone()[0])
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, BUSY_RETRY_MAX_S)


@contextmanager
def _kept_checked(
    entry: _Kept, path: Path, budget_s: float, busy: int
) -> Iterator[sqlite3.Connection]:
    with entry.lock:
        try:
            ident = _check_file(path)
        except safefs.UnsafePathError as exc:
            entry.drop()
            raise OutboxRefused(f"outbound.db refused: {exc}") from None
        except BaseException:
            entry.drop()
            raise
        if entry.conn is None or entry.ident != ident:
            entry.drop()
            # no busy handler: _begin retries a busy start itself (every BUSY_RETRY_S)
            entry.conn = _open_ro(path, 0, lambda: int(time.monotonic() > entry.deadline))
            entry.ident = ident
        conn = entry.conn
        entry.deadline = time.monotonic() + budget_s
        try:
            cookie = _begin(conn, busy)
            if cookie != entry.schema:
                entry.schema = None
                check_schema(conn)
                entry.schema = cookie
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            entry.drop()  # whatever went wrong, the next read starts from a fresh check
            if is_busy(exc):
                raise OutboxBusy(f"outbound.db: {exc}") from None
            if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
                raise OutboxRefused(f"reading outbound.db took over {budget_s:g} s") from None
            if isinstance(exc, sqlite3.DatabaseError):
                raise OutboxRefused(f"outbound.db: {exc}") from None
            raise
        finally:
            if entry.retired:
                entry.drop()


@contextmanager
def open_checked(
    path: Path, *, budget_s: float = READ_BUDGET_S, write: bool = False, busy_ms: int | None = None
) -> Iterator[sqlite3.Connection]:
    """A connection on ``path`` inside one transaction whose schema was checked, with work
    bounded by ``budget_s``. Raises ``OutboxRefused`` or ``FileNotFoundError``.

    ``busy_ms``: how long to wait for the runner's write lock (default ``BUSY_WAIT_MS``; the
    reads made on the event loop pass 0: a runner holding its lock must not stall the host,
    and a locked file reads as refused, never waited for)."""
    if busy_ms is None:
        busy = BUSY_TRY_MS if getattr(_pool_thread, "on", False) else BUSY_WAIT_MS
    else:
        busy = busy_ms
    entry = None if write or budget_s <= INLINE_BUDGET_S else _kept.get(str(path))
    if entry is not None:
        with _kept_checked(entry, path, budget_s, busy) as kept_conn:
            yield kept_conn
        return
    try:
        _check_file(path)
    except safefs.UnsafePathError as exc:
        raise OutboxRefused(f"outbound.db refused: {exc}") from None
    mode = "rw" if write else "ro"
    uri = f"file:{quote(str(path))}?mode={mode}&nofollow=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy / 1000,
                               check_same_thread=False)  # fmt: skip
    except sqlite3.Error as exc:
        raise OutboxRefused(f"outbound.db cannot be opened: {exc}") from None
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_OPS)
    try:
        conn.execute(f"PRAGMA busy_timeout = {min(busy, BUSY_TIMEOUT_MS)}")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA mmap_size = 0")
        if write:
            session_write_pragmas(conn, OUTBOUND_JOURNAL_MODE)
        else:
            conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        check_schema(conn)
        yield conn
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise OutboxRefused(f"reading outbound.db took over {budget_s:g} s") from None
        if is_busy(exc):
            raise OutboxBusy(f"outbound.db: {exc}") from None
        raise OutboxRefused(f"outbound.db: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise OutboxRefused(f"outbound.db: {exc}") from None
    finally:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        conn.close()


_ROW_SQL = f"""
SELECT substr(id, 1, {MAX_FIELD_BYTES}) AS id, seq,
       substr(in_reply_to, 1, {MAX_FIELD_BYTES}) AS in_reply_to,
       substr(timestamp, 1, 64) AS timestamp, substr(deliver_after, 1, 64) AS deliver_after,
       substr(recurrence, 1, {MAX_FIELD_BYTES}) AS recurrence, substr(kind, 1, 32) AS kind,
       substr(platform_id, 1, {MAX_FIELD_BYTES}) AS platform_id,
       substr(channel_type, 1, 64) AS channel_type,
       substr(thread_id, 1, {MAX_FIELD_BYTES}) AS thread_id,
       CASE WHEN length(CAST(content AS BLOB)) > {MAX_CONTENT_BYTES} THEN NULL
            ELSE CAST(content AS TEXT) END AS content,
       CASE WHEN length(CAST(content AS BLOB)) > {MAX_CONTENT_BYTES} THEN 'size'
            WHEN length(CAST(content AS BLOB)) > {CHEAP_CONTENT_BYTES}
                 AND length(CAST(content AS TEXT))
                     - length(replace(CAST(content AS TEXT), ',', '')) > {MAX_CONTENT_COMMAS}
            THEN 'commas' END AS content_refused
FROM messages_out WHERE seq > ? ORDER BY seq LIMIT ?
"""
# why a row's content is None: 'size' or 'commas' (the row itself is sent as refused)
CONTENT_REFUSED = {
    "size": f"outbound content over {MAX_CONTENT_BYTES} bytes",
    "commas": f"outbound content over {CHEAP_CONTENT_BYTES} bytes with more than "
    f"{MAX_CONTENT_COMMAS} commas (send large data as a file)",
}


def read_rows(path: Path, after_seq: int, limit: int = MAX_ROWS) -> list[OutRow]:
    """``messages_out`` rows above ``after_seq`` in seq order (at most ``limit``, and no more
    than :data:`MAX_READ_CONTENT` of content past the first); a row whose content is
    refused (:data:`CONTENT_REFUSED`) comes with ``content`` None and the reason's key in
    ``content_refused``."""
    with open_checked(path) as conn:
        return _rows(conn, after_seq, limit)


def read_pass(
    path: Path, after_seq: int, *, top: bool = False,
    also: Callable[[sqlite3.Connection], T] | None = None,
) -> tuple[list[OutRow], int | None, T | sqlite3.Error | None]:  # fmt: skip
    """A delivery pass's read: :func:`read_rows`; with ``top``, then the file's highest seq
    (at least the rows' highest); with ``also``, then ``also(conn)`` (another reader's
    indexed read of the same file, e.g. the runner's new acks) in the same checked
    transaction: one thread hop and one lock of the file for both (issue 19). A SQLite
    error in ``also`` is returned as its result: it is that reader's, the rows stand."""
    with open_checked(path) as conn:
        rows = _rows(conn, after_seq, MAX_ROWS)
        high = _max_seq(conn) if top else None
        if also is None:
            return rows, high, None
        try:
            return rows, high, also(conn)
        except sqlite3.Error as exc:
            return rows, high, exc


def _rows(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[OutRow]:
    cur = conn.execute(_ROW_SQL, (after_seq, limit))
    names = [d[0] for d in cur.description]
    rows: list[OutRow] = []
    size = 0
    for r in cur:
        row = dict(zip(names, r, strict=True))
        if row["content_refused"] is not None:
            row["content"] = None
        size += len(row["content"] or "")
        if rows and size > MAX_READ_CONTENT:
            break  # (the next read starts after the last row returned)
        rows.append(row)
    return rows


def _has(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
    return row.fetchone() is not None


def read_acks(
    path: Path, ids: list[str], *, budget_s: float = READ_BUDGET_S
) -> dict[str, tuple[str, str | None]]:
    """``processing_ack`` entries (status, status_changed) of ``ids``."""
    found: dict[str, tuple[str, str | None]] = {}
    if not ids:
        return found
    with open_checked(path, budget_s=budget_s, busy_ms=_busy_for(budget_s)) as conn:
        if not _has(conn, "processing_ack"):
            return found
        for i in range(0, len(ids), MAX_IDS):
            chunk = ids[i : i + MAX_IDS]
            marks = ",".join("?" for _ in chunk)
            for r in conn.execute(
                "SELECT substr(message_id, 1, 1024), substr(status, 1, 32), "
                f"substr(status_changed, 1, 64) FROM processing_ack WHERE message_id IN ({marks})",
                chunk,
            ):
                found[str(r[0])] = (str(r[1]), r[2])
    return found


def read_container_state(path: Path) -> dict[str, Any] | None:
    with open_checked(path) as conn:
        if not _has(conn, "container_state"):
            return None
        cur = conn.execute(
            "SELECT id, substr(current_tool, 1, 64) AS current_tool, tool_declared_timeout_ms, "
            "substr(tool_started_at, 1, 64) AS tool_started_at, "
            "substr(updated_at, 1, 64) AS updated_at FROM container_state WHERE id=1"
        )
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None


def read_max_seq(path: Path, *, budget_s: float = INLINE_BUDGET_S) -> int:
    """The highest ``messages_out`` seq (0 when missing or refused): an indexed lookup."""
    try:
        with open_checked(path, budget_s=budget_s, busy_ms=_busy_for(budget_s)) as conn:
            return _max_seq(conn)
    except (OSError, OutboxRefused):
        return 0  # seqs stay unique by parity; only cross-table order is approximate


def _busy_for(budget_s: float) -> int:
    """No lock wait for the reads made on the event loop (``INLINE_BUDGET_S``)."""
    return 0 if budget_s <= INLINE_BUDGET_S else BUSY_WAIT_MS


def read_max_seq_checked(path: Path, *, budget_s: float = READ_BUDGET_S) -> int:
    """Like :func:`read_max_seq` but raising ``OutboxRefused``/``OSError`` (for doctor)."""
    with open_checked(path, budget_s=budget_s) as conn:
        return _max_seq(conn)


def _max_seq(conn: sqlite3.Connection) -> int:
    value = conn.execute("SELECT MAX(seq) FROM messages_out").fetchone()[0]
    return int(value) if isinstance(value, int) else 0
