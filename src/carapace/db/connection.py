"""One way to open SQLite: ``connect()`` with the pragmas of each DB kind, and ``transaction()``.

Central DB (``data/v2.db``): WAL, ``foreign_keys=ON``, busy timeout. Session DBs
(``inbound.db``/``outbound.db``): a rollback journal (WAL does not survive container mounts)
whose ``-journal`` file is created once and never deleted, so a sandbox can bind it
read-only and the agent cannot plant a hot journal (docs/sandbox.md); ``synchronous=NORMAL``.
The host's ``inbound.db`` in ``journal_mode=PERSIST`` (a commit zeroes the journal's header
and syncs it: every commit survives a power loss, with no truncation, a file-system metadata
change); the runner's ``outbound.db`` in ``TRUNCATE`` (3 syncs a commit, a power loss can
roll back the last one) (docs/compat.md D8); busy timeout; opened read-only by the side that
does not own the file.
Connections run in autocommit mode (``isolation_level=None``); every write that must be
atomic goes through ``transaction()`` (``BEGIN IMMEDIATE``; savepoints when nested).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Literal

    DbKind = Literal["central", "session"]

BUSY_TIMEOUT_MS = 5000
# The host's commits to a session's inbound.db wait at most this for a reader's lock. The
# agent may read that file, so it can keep a read transaction open for as long as it likes;
# a commit waiting for it holds the PENDING lock, which keeps every other reader out (the
# host's event loop, delivery, the sweep). Runner reads take well under it; a commit that
# gives up is rolled back and its caller tries again later (host/session_writer.py).
COMMIT_WAIT_MS = 10


class _CommitWaitConnection(sqlite3.Connection):
    """A connection whose commits wait at most ``commit_wait_ms`` for a reader's lock."""

    commit_wait_ms: int = COMMIT_WAIT_MS
    busy_ms: int = BUSY_TIMEOUT_MS  # its busy timeout, as set by :func:`set_busy`


# The host's file (inbound.db): every commit durable, the messages acknowledged to their
# senders and the delivery records alike, by SQLite's own sync of the zeroed header (4
# syncs, no truncation). The runner's (outbound.db): 3 syncs, the commit point (the
# truncation) not synced, so a power loss can roll back a reply, which the agent then writes
# again (never lost; a reply repeated at worst); it keeps a chat-paced round trip within 15
# fsyncs (docs/compat.md D8).
INBOUND_JOURNAL_MODE = "PERSIST"
OUTBOUND_JOURNAL_MODE = "TRUNCATE"
SESSION_SYNCHRONOUS = "NORMAL"
# a PERSIST journal larger than this after a commit (a big transaction's) is cut back to
# it (not synced: past the zeroed header, its bytes are never read again); a round trip's
# commits (~10 pages, ~40 KiB) fit, and 1,000 sessions keep at most 64 MiB of journals
SESSION_JOURNAL_LIMIT = 64 * 1024


def connect(
    path: str | Path,
    kind: DbKind = "central",
    *,
    readonly: bool = False,
    check_same_thread: bool = True,
    commit_wait_ms: int | None = None,
) -> sqlite3.Connection:
    """Open a connection with the pragmas of its kind (DESIGN §1 invariant 3).
    ``commit_wait_ms``: its commits wait at most this long for another's lock (the busy
    timeout stays :data:`BUSY_TIMEOUT_MS` for everything else)."""
    p = Path(path)
    if readonly:
        uri = f"file:{p.resolve().as_posix()}?mode=ro"
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=check_same_thread,
        )
    else:
        conn = sqlite3.connect(
            str(p),
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=check_same_thread,
            factory=sqlite3.Connection if commit_wait_ms is None else _CommitWaitConnection,
        )
        if isinstance(conn, _CommitWaitConnection):
            conn.commit_wait_ms = int(commit_wait_ms or 0)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if kind == "central":
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    else:
        if not readonly:
            session_write_pragmas(conn, session_journal_mode(p))
        else:
            conn.execute("PRAGMA mmap_size = 0")
    return conn


def session_journal_mode(path: str | Path) -> str:
    """The journal mode of the session DB at ``path``: the runner's ``outbound.db`` or the
    host's ``inbound.db`` (any other name: the host's)."""
    return OUTBOUND_JOURNAL_MODE if Path(path).name == "outbound.db" else INBOUND_JOURNAL_MODE


def session_write_pragmas(conn: sqlite3.Connection, mode: str = INBOUND_JOURNAL_MODE) -> None:
    """The journal and sync settings of a read-write session-DB connection (per connection:
    nothing is stored in the file, so NanoClaw's ``DELETE`` opens still work)."""
    conn.execute(f"PRAGMA journal_mode = {mode}")
    conn.execute(f"PRAGMA journal_size_limit = {SESSION_JOURNAL_LIMIT}")
    conn.execute(f"PRAGMA synchronous = {SESSION_SYNCHRONOUS}")


# connections (by id, only while their transaction is open) whose savepoint asked for a
# durable commit (sqlite3.Connection takes no weak references)
_durable_wanted: set[int] = set()


@contextmanager
def transaction(conn: sqlite3.Connection, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; nested calls use savepoints. Rolls back on error.

    ``durable``: on a session DB, the commit also survives a power loss (see
    :func:`sync_journal`); for a message acknowledged to its sender. A nested call takes
    the outer transaction's commit durable."""
    if conn.in_transaction:
        if durable:
            _durable_wanted.add(id(conn))
        # one name for every level (each RELEASE and ROLLBACK TO names the innermost
        # savepoint of that name, and these nest as the calls do): the same three
        # statements every time, prepared once per connection, not per call (issue 19)
        conn.execute("SAVEPOINT carapace_sp")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO carapace_sp")
            conn.execute("RELEASE carapace_sp")
            raise
        conn.execute("RELEASE carapace_sp")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        _durable_wanted.discard(id(conn))
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _commit(conn)
    if durable or id(conn) in _durable_wanted:
        _durable_wanted.discard(id(conn))
        sync_journal(conn)


def set_busy(conn: sqlite3.Connection, ms: int) -> None:
    """Set the connection's busy timeout (and note it, for :func:`_commit`)."""
    conn.execute(f"PRAGMA busy_timeout = {int(ms)}")
    if isinstance(conn, _CommitWaitConnection):
        conn.busy_ms = int(ms)


def _commit(conn: sqlite3.Connection) -> None:
    """COMMIT, waiting at most the connection's ``commit_wait_ms`` for a lock when it has
    one. A commit that cannot finish (a reader's lock: SQLITE_BUSY leaves the transaction
    open, holding the PENDING lock that keeps every new reader out) is undone at once."""
    before = None
    if isinstance(conn, _CommitWaitConnection) and conn.busy_ms > conn.commit_wait_ms:
        conn.execute(f"PRAGMA busy_timeout = {conn.commit_wait_ms}")  # (no query per
        before = conn.busy_ms  # commit: a writer thread's connection waits less already)
    try:
        conn.execute("COMMIT")
    except BaseException:
        _durable_wanted.discard(id(conn))
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    finally:
        if before is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {before}")


def sync_journal(conn: sqlite3.Connection) -> None:
    """Make the last commit of a session DB survive a power loss.

    In ``journal_mode=PERSIST`` (``inbound.db``'s mode) it already does: the commit
    point, the journal's zeroed header, is synced by the commit itself. In ``TRUNCATE``
    or ``DELETE`` mode (a connection whose mode did not switch) ``synchronous=NORMAL``
    leaves the commit point (the emptied or removed journal) unsynced, and a power loss
    can roll the commit back: the journal (or its folder) is fsynced here. A no-op for a
    memory DB."""
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if mode not in ("truncate", "delete"):  # persist: synced; wal, memory: not a session file
        return
    row = conn.execute("PRAGMA database_list").fetchone()
    if not row or not row[2]:
        return
    target = f"{row[2]}-journal" if mode == "truncate" else os.path.dirname(row[2])
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_wal(path: str | os.PathLike[str]) -> None:
    """Make every commit so far to the WAL database at ``path`` survive a power loss:
    fsync its ``-wal`` (at ``synchronous=NORMAL`` a WAL commit is synced only by the next
    checkpoint). From any thread: it opens a descriptor of its own. A no-op when there is
    no WAL file (nothing uncheckpointed)."""
    try:
        fd = os.open(f"{os.fspath(path)}-wal", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_busy(exc: BaseException) -> bool:
    """A lock held by the other side (``SQLITE_BUSY``, "database is locked"), not a damaged
    or missing file: worth trying again shortly (the runner's inbound reads retry every
    0.3 ms rather than in SQLite's busy handler, whose first sleeps are 1, 2 and 5 ms)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "database is locked" in str(exc)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return row.fetchone() is not None


def column_names(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def run_statements(conn: sqlite3.Connection, script: str) -> None:
    """Run several statements inside the caller's transaction, if any.

    (``executescript`` would COMMIT first, breaking one-transaction-per-migration.)
    """
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""
    if buf.strip():
        conn.execute(buf)
