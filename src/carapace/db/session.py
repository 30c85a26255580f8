"""Session databases: ``inbound.db`` (host writes) and ``outbound.db`` (runner writes).

Folder layout (spec/host.md §2.1)::

    <home>/data/v2-sessions/<agent_group_id>/<session_id>/
        inbound.db  outbound.db  .heartbeat  inbox/<message_id>/  outbox/<message_out_id>/
        conversations/<session_id>.jsonl   (the transcript, per session)

Seq parity (DESIGN §1 invariant 2): host rows are even, runner rows odd. Both are
allocated inside ``BEGIN IMMEDIATE`` on the owning file, so two writers of the same file
never draw the same number; each side also looks at the other file's maximum so seqs grow
across both tables (NanoClaw's host ignored ``messages_out``, spec §11.1 item 16).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path

from carapace.db.connection import (
    COMMIT_WAIT_MS,
    column_names,
    connect,
    has_table,
    run_statements,
    transaction,
)
from carapace.record import record

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


INBOUND_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages_in (
  id                TEXT PRIMARY KEY,
  seq               INTEGER UNIQUE,
  kind              TEXT NOT NULL,
  timestamp         TEXT NOT NULL,
  status            TEXT DEFAULT 'pending',
  process_after     TEXT,
  recurrence        TEXT,
  series_id         TEXT,
  tries             INTEGER DEFAULT 0,
  trigger           INTEGER NOT NULL DEFAULT 1,
  platform_id       TEXT,
  channel_type      TEXT,
  thread_id         TEXT,
  content           TEXT NOT NULL,
  source_session_id TEXT,
  on_wake           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_messages_in_series ON messages_in(series_id);
CREATE INDEX IF NOT EXISTS idx_messages_in_pending ON messages_in(seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_messages_in_recurring ON messages_in(seq)
  WHERE recurrence IS NOT NULL AND recurrence != '';
CREATE INDEX IF NOT EXISTS idx_messages_in_task ON messages_in(seq) WHERE kind = 'task';
CREATE TABLE IF NOT EXISTS delivered (
  message_out_id      TEXT PRIMARY KEY,
  platform_message_id TEXT,
  status              TEXT NOT NULL DEFAULT 'delivered',
  delivered_at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS destinations (
  name           TEXT PRIMARY KEY,
  display_name   TEXT,
  type           TEXT NOT NULL,
  channel_type   TEXT,
  platform_id    TEXT,
  agent_group_id TEXT
);
CREATE TABLE IF NOT EXISTS session_routing (
  id           INTEGER PRIMARY KEY CHECK (id = 1),
  channel_type TEXT,
  platform_id  TEXT,
  thread_id    TEXT
);
"""

OUTBOUND_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages_out (
  id            TEXT PRIMARY KEY,
  seq           INTEGER UNIQUE,
  in_reply_to   TEXT,
  timestamp     TEXT NOT NULL,
  deliver_after TEXT,
  recurrence    TEXT,
  kind          TEXT NOT NULL,
  platform_id   TEXT,
  channel_type  TEXT,
  thread_id     TEXT,
  content       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS processing_ack (
  message_id     TEXT PRIMARY KEY,
  status         TEXT NOT NULL,
  status_changed TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_state (
  key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS container_state (
  id                       INTEGER PRIMARY KEY CHECK (id = 1),
  current_tool             TEXT,
  tool_declared_timeout_ms INTEGER,
  tool_started_at          TEXT,
  updated_at               TEXT NOT NULL
);
"""


@record(frozen=True)
class SessionPaths:
    """Where one session's files live."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path, agent_group_id: str, session_id: str) -> SessionPaths:
        return cls(data_dir / "v2-sessions" / agent_group_id / session_id)

    @functools.cached_property  # paths are asked for on every routed message
    def inbound(self) -> Path:
        return self.root / "inbound.db"

    @functools.cached_property
    def outbound(self) -> Path:
        return self.root / "outbound.db"

    @functools.cached_property
    def inbound_journal(self) -> Path:
        return self.root / "inbound.db-journal"

    @functools.cached_property
    def outbound_journal(self) -> Path:
        return self.root / "outbound.db-journal"

    @functools.cached_property
    def heartbeat(self) -> Path:
        return self.root / ".heartbeat"

    @functools.cached_property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @functools.cached_property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @functools.cached_property
    def transcripts(self) -> Path:
        """Per-session transcripts (``conversations/<session>.jsonl``; runner-written)."""
        return self.root / "conversations"


# The runner's saved conversation in outbound.db's session_state (runner/conversation_store.py)
CONVERSATION_KEY = "conversation"  # an older runner's: the whole list as one JSON value
CONVERSATION_PREFIX = "conversation/"  # the marker (its value: the save count), then the rows
CONVERSATION_END = "conversation0"  # the first key after the rows' range ("0" follows "/")


def conversation_key(pos: int) -> str:
    """The key of the message at ``pos`` (twelve digits: key order is message order)."""
    return f"{CONVERSATION_PREFIX}{pos:012d}"


def ensure_journals(paths: SessionPaths) -> None:
    """Create both ``-journal`` files if missing (never truncated: a hot journal stays hot).

    Session DBs run in ``journal_mode=PERSIST`` (``inbound.db``) and ``TRUNCATE``
    (``outbound.db``), so a journal, once there, is never deleted;
    creating it up front lets a sandbox bind it (``inbound.db-journal`` read-only) before
    the first transaction. A NanoClaw process (``journal_mode=DELETE``) deletes them again;
    the host re-creates them before each spawn.
    """
    for path in (paths.inbound_journal, paths.outbound_journal):
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)


def init_session_folder(paths: SessionPaths) -> None:
    """Create the folder, ``outbox/``, both DB files and their journals (idempotent)."""
    paths.outbox.mkdir(parents=True, exist_ok=True)
    paths.transcripts.mkdir(mode=0o700, exist_ok=True)
    ensure_journals(paths)
    for path, schema in ((paths.inbound, INBOUND_SCHEMA), (paths.outbound, OUTBOUND_SCHEMA)):
        conn = connect(path, "session")
        try:
            with transaction(conn):
                run_statements(conn, schema)
            if path == paths.inbound:
                upgrade_inbound(conn)
            else:
                upgrade_outbound(conn)
        finally:
            conn.close()


def trigger_clause(conn: sqlite3.Connection) -> str:
    """``AND trigger = 1`` for a read-only look at pending rows, or nothing in a file the
    host has not upgraded yet (before ``trigger`` every row was one)."""
    return "AND trigger = 1 " if "trigger" in column_names(conn, "messages_in") else ""


def upgrade_inbound(conn: sqlite3.Connection) -> None:
    """Lazy column upgrades for old ``inbound.db`` files (spec §2.6)."""
    cols = set(column_names(conn, "messages_in"))
    if (
        {"series_id", "trigger", "source_session_id", "on_wake"} <= cols
        and "status" in set(column_names(conn, "delivered"))
        and all(_has_index(conn, name) for name in HOST_INDEXES)
    ):
        return
    with transaction(conn):
        # read again under the write lock: another connection may have upgraded meanwhile
        cols = set(column_names(conn, "messages_in"))
        if "series_id" not in cols:
            conn.execute("ALTER TABLE messages_in ADD COLUMN series_id TEXT")
            conn.execute("UPDATE messages_in SET series_id = id")
            conn.execute(
                "CREATE INDEX IF NOT EXISTS idx_messages_in_series ON messages_in(series_id)"
            )
        if "trigger" not in cols:
            conn.execute("ALTER TABLE messages_in ADD COLUMN trigger INTEGER NOT NULL DEFAULT 1")
        if "source_session_id" not in cols:
            conn.execute("ALTER TABLE messages_in ADD COLUMN source_session_id TEXT")
        if "on_wake" not in cols:
            conn.execute("ALTER TABLE messages_in ADD COLUMN on_wake INTEGER NOT NULL DEFAULT 0")
        dcols = set(column_names(conn, "delivered"))
        if "platform_message_id" not in dcols:
            conn.execute("ALTER TABLE delivered ADD COLUMN platform_message_id TEXT")
        if "status" not in dcols:
            conn.execute(
                "ALTER TABLE delivered ADD COLUMN status TEXT NOT NULL DEFAULT 'delivered'"
            )
        for statement in HOST_INDEXES.values():
            conn.execute(statement)


# Partial indexes (issue 19), each holding only the rows it names, so that what reads
# them does not grow with the session's history: the pending rows in seq order (the
# runner's every poll, the host's ack sync); the rows that carry a recurrence (the series
# heads: the sweep's task hook); the task rows (the hook's look at finished occurrences).
# A chat row's insert touches none but the first.
HOST_INDEXES = {
    "idx_messages_in_pending": "CREATE INDEX IF NOT EXISTS idx_messages_in_pending "
    "ON messages_in(seq) WHERE status = 'pending'",
    "idx_messages_in_recurring": "CREATE INDEX IF NOT EXISTS idx_messages_in_recurring "
    "ON messages_in(seq) WHERE recurrence IS NOT NULL AND recurrence != ''",
    "idx_messages_in_task": "CREATE INDEX IF NOT EXISTS idx_messages_in_task "
    "ON messages_in(seq) WHERE kind = 'task'",
}


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", (name,))
    return row.fetchone() is not None


def upgrade_outbound(conn: sqlite3.Connection) -> None:
    """The runner-side lazy upgrades (spec §2.6): state tables, ``session_state.updated_at``."""
    if not has_table(conn, "session_state") or not has_table(conn, "container_state"):
        with transaction(conn):
            run_statements(conn, OUTBOUND_SCHEMA)
    if "updated_at" not in column_names(conn, "session_state"):
        conn.execute("ALTER TABLE session_state ADD COLUMN updated_at TEXT NOT NULL DEFAULT ''")


# Inbound files this process has already checked for missing tables and columns, by
# (path, inode): the host opens inbound.db per operation, and re-running the schema check
# on every open is pure overhead (NanoClaw spec §11.4 item 40). A replaced file has a new
# inode and is checked again.
_checked_inbound: set[tuple[str, int]] = set()
CHECKED_KEPT = 4096


def open_inbound(paths: SessionPaths, *, readonly: bool = False) -> sqlite3.Connection:
    """The host opens read-write (and upgrades, once per file); the runner opens read-only."""
    if readonly:
        return connect(paths.inbound, "session", readonly=True)
    conn = connect(paths.inbound, "session", commit_wait_ms=COMMIT_WAIT_MS)
    key = (str(paths.inbound), paths.inbound.stat().st_ino)
    if key in _checked_inbound:
        return conn
    if not has_table(conn, "messages_in"):
        with transaction(conn):
            run_statements(conn, INBOUND_SCHEMA)
    upgrade_inbound(conn)
    if len(_checked_inbound) >= CHECKED_KEPT:  # a cache: checked again when needed
        _checked_inbound.clear()
    _checked_inbound.add(key)
    return conn


def open_outbound(paths: SessionPaths, *, readonly: bool = False,
                  shared: bool = False) -> sqlite3.Connection:  # fmt: skip
    """The runner opens read-write; the host opens read-only. ``shared``: usable from any
    thread (the caller serializes its use)."""
    if readonly:
        return connect(paths.outbound, "session", readonly=True)
    conn = connect(paths.outbound, "session", check_same_thread=not shared)
    conn.execute("PRAGMA foreign_keys = ON")
    if not has_table(conn, "messages_out"):
        with transaction(conn):
            run_statements(conn, OUTBOUND_SCHEMA)
    upgrade_outbound(conn)
    return conn


def max_seq(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table}").fetchone()
    return int(row[0])


def peek_max_seq(path: Path, table: str) -> int:
    """The other side's highest seq, read without locking it (0 if the file is missing)."""
    if not path.exists():
        return 0
    try:
        conn = connect(path, "session", readonly=True)
    except sqlite3.Error:
        return 0
    try:
        if not has_table(conn, table):
            return 0
        return max_seq(conn, table)
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def next_even(current_max: int) -> int:
    """The smallest even number above ``current_max`` (2 when empty)."""
    return 2 if current_max < 2 else current_max + 2 - (current_max % 2)


def next_odd(current_max: int) -> int:
    """The smallest odd number above ``current_max`` (1 when empty)."""
    return current_max + 1 if current_max % 2 == 0 else current_max + 2


_IN_COLS = (
    "id", "kind", "timestamp", "status", "process_after", "recurrence", "series_id",
    "tries", "trigger", "platform_id", "channel_type", "thread_id", "content",
    "source_session_id", "on_wake",
)  # fmt: skip


def _insert_in(conn: sqlite3.Connection, row: dict[str, Any], seq: int,
               tail: str = "") -> sqlite3.Cursor:  # fmt: skip
    """``INSERT INTO messages_in`` of ``row`` as row ``seq`` (``tail``: a conflict clause)."""
    names, values = _in_values(row)
    return conn.execute(
        f"INSERT INTO messages_in ({', '.join(names)}) VALUES "
        f"({', '.join('?' for _ in names)}){tail}",
        [seq, *values],
    )


def _in_values(row: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """The columns and values a ``messages_in`` insert of ``row`` writes (seq first)."""
    values = {
        "status": "pending",
        "tries": 0,
        "trigger": 1,
        "on_wake": 0,
        **{k: row.get(k) for k in _IN_COLS if k in row},
    }
    if values.get("series_id") is None and values.get("kind") == "task":
        values["series_id"] = values["id"]
    names = [c for c in _IN_COLS if c in values]
    return ["seq", *names], [values[c] for c in names]


def insert_message_in(conn: sqlite3.Connection, row: dict[str, Any], *, other_max: int = 0) -> int:
    """Insert one ``messages_in`` row with a freshly allocated even seq; returns the seq.

    Runs in its own ``BEGIN IMMEDIATE`` (or a savepoint of the caller's transaction).
    ``other_max`` is the outbound side's highest seq, to keep seqs growing across tables.
    """
    with transaction(conn, durable=True):
        seq = next_even(max(max_seq(conn, "messages_in"), other_max))
        _insert_in(conn, row, seq)
    return seq


def insert_message_in_if_new(conn: sqlite3.Connection, row: dict[str, Any], seq: int) -> bool:
    """Insert ``row`` as ``messages_in`` row ``seq`` unless a row with its id is there
    (False); one statement, in the caller's transaction (a refusal of another kind, a
    constraint or a full disk, raises and leaves the transaction's other writes alone)."""
    return _insert_in(conn, row, seq, " ON CONFLICT(id) DO NOTHING").rowcount == 1


def insert_message_out(conn: sqlite3.Connection, row: dict[str, Any], *, other_max: int = 0) -> int:
    """Insert one ``messages_out`` row with a freshly allocated odd seq; returns the seq."""
    cols = [
        "id", "in_reply_to", "timestamp", "deliver_after", "recurrence", "kind",
        "platform_id", "channel_type", "thread_id", "content",
    ]  # fmt: skip
    with transaction(conn):
        seq = next_odd(max(max_seq(conn, "messages_out"), other_max))
        names = ["seq", *(c for c in cols if c in row)]
        conn.execute(
            f"INSERT INTO messages_out ({', '.join(names)}) VALUES "
            f"({', '.join('?' for _ in names)})",
            [seq, *(row[c] for c in names[1:])],
        )
    return seq


def touch_heartbeat(paths: SessionPaths) -> None:
    """Set ``.heartbeat``'s time to now (one ``utime``; made when missing)."""
    try:
        os.utime(paths.heartbeat)
    except FileNotFoundError:
        paths.heartbeat.touch(exist_ok=True)


def heartbeat_mtime(paths: SessionPaths) -> float:
    """Seconds since the epoch of the last heartbeat, 0.0 when absent."""
    try:
        return paths.heartbeat.stat().st_mtime
    except FileNotFoundError:
        return 0.0
