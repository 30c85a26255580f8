"""One way to open SQLite: ``connect()`` with the pragmas of each DB kind, and ``transaction()``.

Central DB (``data/v2.db``): WAL, ``foreign_keys=ON``, busy timeout. Session DBs
(``inbound.db``/``outbound.db``): a rollback journal (WAL does not survive container mounts)
in ``journal_mode=PERSIST``: the ``-journal`` file is created once and never deleted, so a
sandbox can bind it read-only and the agent cannot plant a hot journal (docs/sandbox.md);
busy timeout; ``synchronous`` stays at its default (FULL); opened read-only by the side that
does not own the file.
Connections run in autocommit mode (``isolation_level=None``); every write that must be
atomic goes through ``transaction()`` (``BEGIN IMMEDIATE``; savepoints when nested).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

BUSY_TIMEOUT_MS = 5000
SESSION_JOURNAL_MODE = "PERSIST"

DbKind = Literal["central", "session"]


def connect(
    path: str | Path,
    kind: DbKind = "central",
    *,
    readonly: bool = False,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open a connection with the pragmas of its kind (DESIGN §1 invariant 3)."""
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
        )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if kind == "central":
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    else:
        if not readonly:
            conn.execute(f"PRAGMA journal_mode = {SESSION_JOURNAL_MODE}")
        else:
            conn.execute("PRAGMA mmap_size = 0")
    return conn


_savepoints = itertools.count(1)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; nested calls use savepoints. Rolls back on error."""
    if conn.in_transaction:
        name = f"sp{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
