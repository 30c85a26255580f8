"""Session DBs: layout, schemas, pragmas, read-only sides, lazy upgrades, seq parity."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carapace.db.connection import connect, transaction
from carapace.db.session import (
    SessionPaths,
    init_session_folder,
    insert_message_in,
    insert_message_out,
    max_seq,
    next_even,
    next_odd,
    open_inbound,
    open_outbound,
    peek_max_seq,
)
from carapace.timefmt import iso, sqlite_ts
from carapace.watch import journal_idle

INBOUND_COLUMNS = {
    "messages_in": [
        "id", "seq", "kind", "timestamp", "status", "process_after", "recurrence", "series_id",
        "tries", "trigger", "platform_id", "channel_type", "thread_id", "content",
        "source_session_id", "on_wake",
    ],
    "delivered": ["message_out_id", "platform_message_id", "status", "delivered_at"],
    "destinations": [
        "name", "display_name", "type", "channel_type", "platform_id", "agent_group_id",
    ],
    "session_routing": ["id", "channel_type", "platform_id", "thread_id"],
}  # fmt: skip
OUTBOUND_COLUMNS = {
    "messages_out": [
        "id", "seq", "in_reply_to", "timestamp", "deliver_after", "recurrence", "kind",
        "platform_id", "channel_type", "thread_id", "content",
    ],
    "processing_ack": ["message_id", "status", "status_changed"],
    "session_state": ["key", "value", "updated_at"],
    "container_state": [
        "id", "current_tool", "tool_declared_timeout_ms", "tool_started_at", "updated_at",
    ],
}  # fmt: skip


@pytest.fixture
def paths(tmp_path: Path) -> SessionPaths:
    p = SessionPaths.of(tmp_path / "data", "ag-1", "sess-1")
    init_session_folder(p)
    return p


def chat(i: int) -> dict[str, object]:
    return {"id": f"m{i}", "kind": "chat", "timestamp": iso(), "content": '{"text":"hi"}'}


def out(i: int) -> dict[str, object]:
    return {"id": f"o{i}", "kind": "chat", "timestamp": sqlite_ts(), "content": '{"text":"yo"}'}


def test_layout_and_schemas(paths: SessionPaths, tmp_path: Path) -> None:
    assert paths.root == tmp_path / "data" / "v2-sessions" / "ag-1" / "sess-1"
    assert paths.outbox.is_dir() and paths.inbound.is_file() and paths.outbound.is_file()
    for path, expected in ((paths.inbound, INBOUND_COLUMNS), (paths.outbound, OUTBOUND_COLUMNS)):
        db = connect(path, "session")
        for table, cols in expected.items():
            assert [r[1] for r in db.execute(f"PRAGMA table_info({table})")] == cols
        # A rollback journal that is never deleted (docs/sandbox.md, DESIGN invariant 3),
        # synced at NORMAL (docs/compat.md D8).
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == (
            "persist" if path == paths.inbound else "truncate"
        )  # the host's file: every commit durable; the runner's: 3 syncs (D8)
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert Path(f"{path}-journal").is_file()
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_each_side_opens_the_other_file_read_only(paths: SessionPaths) -> None:
    ro_in = open_inbound(paths, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro_in.execute("INSERT INTO messages_in (id, kind, timestamp, content) VALUES (1,2,3,4)")
    ro_out = open_outbound(paths, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro_out.execute("DELETE FROM processing_ack")


def test_init_is_idempotent_and_keeps_rows(paths: SessionPaths) -> None:
    db = open_inbound(paths)
    insert_message_in(db, chat(1))
    db.close()
    init_session_folder(paths)
    db = open_inbound(paths)
    assert db.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0] == 1


def test_lazy_upgrade_of_old_inbound_file(tmp_path: Path) -> None:
    """An inbound.db from before series_id/trigger/source_session_id/on_wake gets them."""
    p = SessionPaths.of(tmp_path, "ag", "old")
    p.root.mkdir(parents=True)
    raw = sqlite3.connect(p.inbound)
    raw.executescript(
        """
        CREATE TABLE messages_in (id TEXT PRIMARY KEY, seq INTEGER UNIQUE, kind TEXT NOT NULL,
          timestamp TEXT NOT NULL, status TEXT DEFAULT 'pending', process_after TEXT,
          recurrence TEXT, tries INTEGER DEFAULT 0, platform_id TEXT, channel_type TEXT,
          thread_id TEXT, content TEXT NOT NULL);
        CREATE TABLE delivered (message_out_id TEXT PRIMARY KEY, delivered_at TEXT NOT NULL);
        INSERT INTO messages_in (id, seq, kind, timestamp, content, recurrence)
          VALUES ('task-1', 2, 'task', '2025-01-01 00:00:00', '{"prompt":"p"}', '0 9 * * *');
        INSERT INTO delivered VALUES ('o1', '2025-01-01 00:00:01');
        """
    )
    raw.commit()
    raw.close()
    db = open_inbound(p)
    row = db.execute("SELECT * FROM messages_in").fetchone()
    assert row["series_id"] == "task-1" and row["trigger"] == 1 and row["on_wake"] == 0
    assert row["source_session_id"] is None
    d = db.execute("SELECT * FROM delivered").fetchone()
    assert d["status"] == "delivered" and d["platform_message_id"] is None
    idx = [r[1] for r in db.execute("PRAGMA index_list(messages_in)")]
    assert "idx_messages_in_series" in idx
    want = {"idx_messages_in_pending", "idx_messages_in_recurring", "idx_messages_in_task"}
    assert want <= set(idx)  # added to an old file too
    assert insert_message_in(db, chat(5)) == 4


@pytest.mark.parametrize(
    "name", ["idx_messages_in_pending", "idx_messages_in_recurring", "idx_messages_in_task"]
)
def test_a_partial_index_is_added_to_a_file_that_lacks_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import carapace.db.session as session_db

    p = SessionPaths.of(tmp_path, "ag", "s")
    p.root.mkdir(parents=True)
    db = open_inbound(p)
    db.execute(f"DROP INDEX {name}")
    db.close()
    monkeypatch.setattr(session_db, "_checked_inbound", set())  # another host process
    db = open_inbound(p)
    idx = [r[1] for r in db.execute("PRAGMA index_list(messages_in)")]
    assert name in idx
    db.close()


def test_the_series_reads_use_their_partial_indexes(tmp_path: Path) -> None:
    """The sweep's task hook looks at the series heads and the task rows only: a session
    with years of chat (or of a minutely task's finished occurrences) costs it no more."""
    from carapace.host.sweep import SERIES_PRESENT, TASK_ROWS_SINCE
    from carapace.sched.series import DUE_HEADS_SQL, NEXT_HEAD_SQL

    p = SessionPaths.of(tmp_path, "ag", "s")
    p.root.mkdir(parents=True)
    db = open_inbound(p)
    for query, index in (
        (DUE_HEADS_SQL, "idx_messages_in_recurring"),
        (NEXT_HEAD_SQL, "idx_messages_in_recurring"),
        (SERIES_PRESENT, "idx_messages_in_recurring"),
        (TASK_ROWS_SINCE, "idx_messages_in_task"),
    ):
        params = ("x",) * query.count("?")
        plan = " ".join(str(r[-1]) for r in db.execute(f"EXPLAIN QUERY PLAN {query}", params))
        assert index in plan, (query, plan)
    db.close()


def test_pending_reads_use_the_pending_index(tmp_path: Path) -> None:
    """The runner's poll reads only pending rows, not the session's whole history."""
    p = SessionPaths.of(tmp_path, "ag", "s")
    p.root.mkdir(parents=True)
    db = open_inbound(p)
    for query in (
        "SELECT * FROM messages_in WHERE status = 'pending' AND (process_after IS NULL OR "
        "datetime(process_after) <= datetime(?)) ORDER BY seq ASC LIMIT 1000",
        "SELECT process_after FROM messages_in WHERE status = 'pending' AND "
        "process_after IS NOT NULL AND datetime(process_after) > datetime(?)",
    ):
        plan = " ".join(str(r[-1]) for r in db.execute(f"EXPLAIN QUERY PLAN {query}", ("x",)))
        assert "idx_messages_in_pending" in plan, plan


def test_lazy_upgrade_of_old_outbound_file(tmp_path: Path) -> None:
    p = SessionPaths.of(tmp_path, "ag", "old")
    p.root.mkdir(parents=True)
    raw = sqlite3.connect(p.outbound)
    raw.executescript(
        """
        CREATE TABLE messages_out (id TEXT PRIMARY KEY, seq INTEGER UNIQUE, in_reply_to TEXT,
          timestamp TEXT NOT NULL, deliver_after TEXT, recurrence TEXT, kind TEXT NOT NULL,
          platform_id TEXT, channel_type TEXT, thread_id TEXT, content TEXT NOT NULL);
        CREATE TABLE processing_ack (message_id TEXT PRIMARY KEY, status TEXT NOT NULL,
          status_changed TEXT NOT NULL);
        CREATE TABLE session_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO session_state VALUES ('sdk_session', 'abc');
        """
    )
    raw.commit()
    raw.close()
    db = open_outbound(p)
    cols = [r[1] for r in db.execute("PRAGMA table_info(session_state)")]
    assert cols == ["key", "value", "updated_at"]
    assert db.execute("SELECT value FROM session_state").fetchone()[0] == "abc"
    assert next(r[1] for r in db.execute("PRAGMA table_info(container_state)")) == "id"


def test_seq_formulas() -> None:
    assert [next_even(m) for m in (0, 1, 2, 3, 7, 8)] == [2, 2, 4, 4, 8, 10]
    assert [next_odd(m) for m in (0, 1, 2, 3, 8)] == [1, 3, 3, 5, 9]


def test_seq_grows_across_both_tables(paths: SessionPaths) -> None:
    inbound, outbound = open_inbound(paths), open_outbound(paths)
    assert insert_message_in(inbound, chat(1)) == 2
    o = insert_message_out(outbound, out(1), other_max=peek_max_seq(paths.inbound, "messages_in"))
    assert o == 3
    o2 = insert_message_out(outbound, out(2), other_max=peek_max_seq(paths.inbound, "messages_in"))
    assert o2 == 5
    s = insert_message_in(inbound, chat(2), other_max=peek_max_seq(paths.outbound, "messages_out"))
    assert s == 6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["in_a", "in_b", "out_a", "out_b"]), min_size=1, max_size=30))
def test_interleaved_writers_keep_parity_and_uniqueness(
    tmp_path_factory: pytest.TempPathFactory, order: list[str]
) -> None:
    p = SessionPaths.of(tmp_path_factory.mktemp("s"), "ag", "s")
    init_session_folder(p)
    conns = {
        "in_a": open_inbound(p),
        "in_b": open_inbound(p),
        "out_a": open_outbound(p),
        "out_b": open_outbound(p),
    }
    for i, who in enumerate(order):
        if who.startswith("in"):
            insert_message_in(
                conns[who], chat(i), other_max=peek_max_seq(p.outbound, "messages_out")
            )
        else:
            insert_message_out(conns[who], out(i), other_max=peek_max_seq(p.inbound, "messages_in"))
    ins = [r[0] for r in conns["in_a"].execute("SELECT seq FROM messages_in ORDER BY rowid")]
    outs = [r[0] for r in conns["out_a"].execute("SELECT seq FROM messages_out ORDER BY rowid")]
    assert all(s % 2 == 0 for s in ins) and all(s % 2 == 1 for s in outs)
    everything = ins + outs
    assert len(set(everything)) == len(everything) == len(order)
    assert ins == sorted(ins) and outs == sorted(outs)
    for c in conns.values():
        c.close()


WRITER = """
import sys
from pathlib import Path
from carapace.db.session import SessionPaths, open_inbound, open_outbound
from carapace.db.session import insert_message_in, insert_message_out
p = SessionPaths(Path(sys.argv[1])); side = sys.argv[2]; tag = sys.argv[3]
conn = open_inbound(p) if side == "in" else open_outbound(p)
for i in range(int(sys.argv[4])):
    row = {"id": f"{tag}-{i}", "kind": "chat", "timestamp": "t", "content": "{}"}
    (insert_message_in if side == "in" else insert_message_out)(conn, row)
"""


@pytest.mark.parametrize("side", ["in", "out"])
def test_two_processes_writing_at_once_never_share_a_seq(paths: SessionPaths, side: str) -> None:
    n = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(paths.root), side, tag, str(n)])
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    db = open_inbound(paths) if side == "in" else open_outbound(paths)
    table = "messages_in" if side == "in" else "messages_out"
    seqs = [r[0] for r in db.execute(f"SELECT seq FROM {table}")]
    assert len(seqs) == len(set(seqs)) == 2 * n
    assert {s % 2 for s in seqs} == ({0} if side == "in" else {1})
    assert max_seq(db, table) == (2 * n * 2 if side == "in" else 2 * n * 2 - 1)


def test_every_commit_ends_durable_and_a_mode_that_did_not_switch_is_synced_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In ``journal_mode=PERSIST`` at ``synchronous=NORMAL`` a commit's last step, zeroing
    the journal's header, is synced by SQLite itself: a stored message survives a power
    loss with no fsync of carapace's, and the journal is never truncated (docs/compat.md
    D8). A connection whose mode is another falls back: in ``TRUNCATE`` a message insert
    syncs the emptied journal, in ``DELETE`` the folder (the journal's removal); other
    commits sync nothing more."""
    import os

    paths = SessionPaths.of(tmp_path / "data", "ag-1", "sess-1")
    init_session_folder(paths)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    conn = connect(paths.inbound, "session")
    insert_message_in(conn, {"id": "m-1", "kind": "chat", "timestamp": "t", "content": "{}"})
    assert synced == []
    assert paths.inbound_journal.stat().st_size > 0  # kept, never truncated
    assert journal_idle(str(paths.inbound_journal))  # its header zeroed: the commit point
    assert [r[0] for r in conn.execute("SELECT id FROM messages_in")] == ["m-1"]

    conn.execute("PRAGMA journal_mode = TRUNCATE")
    with transaction(conn):
        conn.execute("INSERT INTO destinations VALUES ('home', NULL, 'channel', 'cli', 'x', NULL)")
    assert synced == []
    with transaction(conn):  # nested: the sync comes after the outer commit
        insert_message_in(conn, {"id": "m-2", "kind": "chat", "timestamp": "t", "content": "{}"})
        assert synced == []
    assert synced == [f"{paths.inbound}-journal"]
    assert paths.inbound_journal.stat().st_size == 0
    with pytest.raises(RuntimeError), transaction(conn):  # rolled back: nothing to sync
        insert_message_in(conn, {"id": "m-3", "kind": "chat", "timestamp": "t", "content": "{}"})
        raise RuntimeError("abandoned")
    assert len(synced) == 1

    conn.execute("PRAGMA journal_mode = DELETE")
    insert_message_in(conn, {"id": "m-4", "kind": "chat", "timestamp": "t", "content": "{}"})
    assert synced == [f"{paths.inbound}-journal", str(paths.root)]
    assert not paths.inbound_journal.exists()
    conn.close()


def test_an_insert_if_new_skips_a_known_id_and_refuses_any_other_conflict(
    paths: SessionPaths,
) -> None:
    """The host's write of routed rows (issue 19: one statement a row, not a lookup, a
    savepoint and an insert): a known id is skipped (False, nothing written); any other
    conflict (here a seq taken) raises, not ignored, and leaves the transaction's other
    writes alone."""
    from carapace.db.session import insert_message_in_if_new

    conn = open_inbound(paths)
    with transaction(conn):
        assert insert_message_in_if_new(conn, chat(1), 2)
        assert not insert_message_in_if_new(conn, chat(1), 4)  # the id is there
        with pytest.raises(sqlite3.IntegrityError):
            insert_message_in_if_new(conn, chat(2), 2)  # the seq is taken
        assert insert_message_in_if_new(conn, chat(3), 4)
    rows = conn.execute("SELECT id, seq FROM messages_in ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [(chat(1)["id"], 2), (chat(3)["id"], 4)]
    conn.close()


def test_nested_transactions_undo_only_their_own_writes(paths: SessionPaths) -> None:
    """Savepoints share one name at every level (issue 19: statements prepared once): a
    failure undoes its own level only, whatever the depth, and the outer commit keeps the
    rest."""
    conn = open_inbound(paths)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    with transaction(conn):
        conn.execute("INSERT INTO destinations VALUES ('a', NULL, 'channel', 'cli', 'x', NULL)")
        with transaction(conn):
            conn.execute("INSERT INTO destinations VALUES ('b', NULL, 'channel', 'cli', 'x', NULL)")
            with pytest.raises(RuntimeError), transaction(conn):
                conn.execute(
                    "INSERT INTO destinations VALUES ('c', NULL, 'channel', 'cli', 'x', NULL)"
                )
                raise RuntimeError("undo c")
            with transaction(conn):
                conn.execute(
                    "INSERT INTO destinations VALUES ('d', NULL, 'channel', 'cli', 'x', NULL)"
                )
        with pytest.raises(RuntimeError), transaction(conn):
            conn.execute("INSERT INTO destinations VALUES ('e', NULL, 'channel', 'cli', 'x', NULL)")
            with transaction(conn):
                conn.execute(
                    "INSERT INTO destinations VALUES ('f', NULL, 'channel', 'cli', 'x', NULL)"
                )
            raise RuntimeError("undo e and f")
    names = [r[0] for r in conn.execute("SELECT name FROM destinations ORDER BY name")]
    assert names == ["a", "b", "d"]
    assert {s for s in statements if "SAVEPOINT" in s} == {"SAVEPOINT carapace_sp"}
    conn.close()
