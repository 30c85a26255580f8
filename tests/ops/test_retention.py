"""Retention: old processed/delivered rows and transcripts go; unfinished work never does."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from ops_rig import LiveHost

from carapace.channels.fake import make_event
from carapace.cli import main
from carapace.db.session import SessionPaths, insert_message_out, open_outbound
from carapace.db.sessions import list_sessions
from carapace.ops.retention import RetentionPolicy, compact_home, sizes
from carapace.timefmt import sqlite_ts


def _setup(live: LiveHost) -> tuple[str, SessionPaths, list[str]]:
    live.wire_chat("c1")
    for mid in ("m1", "m2", "m3"):
        live.call(live.host.route(make_event(mid, platform_id="c1", id=mid)))
    [s] = live.sync(list_sessions, live.host.db)
    live.runners_started()  # before files are planted in the group folder
    paths = SessionPaths.of(live.home.data_dir, s.agent_group_id, s.id)
    inb = sqlite3.connect(paths.inbound)
    ids = [r[0] for r in inb.execute("SELECT id FROM messages_in ORDER BY seq")]
    inb.execute("UPDATE messages_in SET status='completed' WHERE id IN (?, ?)", ids[:2])
    inb.commit()
    inb.close()
    out = open_outbound(paths)
    for mid in ids[:2]:
        out.execute("INSERT INTO processing_ack VALUES (?, 'completed', ?)", (mid, sqlite_ts()))
    for rid in ("r1", "r2"):
        insert_message_out(out, {"id": rid, "kind": "chat", "timestamp": sqlite_ts(),
                                 "channel_type": "fake", "platform_id": "c1",
                                 "content": json.dumps({"text": rid})})  # fmt: skip
    out.close()
    assert live.call(live.host.deliver_once(s.id)) == 2
    out = open_outbound(paths)
    insert_message_out(out, {"id": "r3", "kind": "chat", "timestamp": sqlite_ts(),
                             "channel_type": "nowhere", "platform_id": "c1",
                             "content": json.dumps({"text": "r3"})})  # fmt: skip
    out.close()
    return s.id, paths, ids


def _ids(path: Path, sql: str) -> set[str]:
    c = sqlite3.connect(path)
    try:
        return {r[0] for r in c.execute(sql)}
    finally:
        c.close()


def test_compaction_archives_old_done_rows_and_keeps_unfinished(live_host: LiveHost) -> None:
    sid, paths, ids = _setup(live_host)
    later = datetime.now(UTC) + timedelta(days=40)
    group = live_host.home.group_dir("ag")
    conv = group / "conversations"
    conv.mkdir(exist_ok=True)
    (conv / f"{sid}.jsonl").write_text('{"role": "user"}\n')
    os.utime(conv / f"{sid}.jsonl", (0, 0))
    db = live_host.host.db
    # a runner is alive: inbound rows go, outbound.db is not touched
    [c] = live_host.sync(compact_home, live_host.home, db, RetentionPolicy(30, "archive"),
                         now=later, running={sid})  # fmt: skip
    assert c.inbound == 2 and c.outbound == 0 and c.acks == 0
    assert _ids(paths.inbound, "SELECT id FROM messages_in") == {ids[2]}  # the pending one
    assert _ids(paths.outbound, "SELECT id FROM messages_out") == {"r1", "r2", "r3"}
    # no runner: acks of gone rows, delivered outbound rows (not the newest), their receipts
    [c] = live_host.sync(compact_home, live_host.home, db, RetentionPolicy(30, "archive"),
                         now=later, running=set())  # fmt: skip
    assert (c.acks, c.outbound, c.delivered) == (2, 2, 2) and c.transcript
    assert _ids(paths.outbound, "SELECT id FROM messages_out") == {"r3"}  # never delivered
    assert _ids(paths.outbound, "SELECT message_id FROM processing_ack") == set()
    assert _ids(paths.inbound, "SELECT message_out_id FROM delivered") == set()
    assert not (conv / f"{sid}.jsonl").exists()
    arch = live_host.home.root / "archive" / c.session_id.split("/")[-1]
    files = list((live_host.home.root / "archive").rglob("*.jsonl.gz"))
    names = {f.name.split("-", 1)[1] for f in files}
    assert names == {"messages_in.jsonl.gz", "processing_ack.jsonl.gz", "messages_out.jsonl.gz",
                     "delivered.jsonl.gz", "transcript.jsonl.gz"}, arch  # fmt: skip
    archived = [json.loads(line) for f in files if "messages_in" in f.name
                for line in gzip.decompress(f.read_bytes()).decode().splitlines()]  # fmt: skip
    assert {r["id"] for r in archived} == set(ids[:2])
    # nothing younger than the age goes
    [c] = live_host.sync(compact_home, live_host.home, db, RetentionPolicy(30, "prune"),
                         running=set())  # fmt: skip
    assert (c.inbound, c.acks, c.outbound, c.delivered) == (0, 0, 0, 0)
    assert sizes(live_host.home)["archive"] > 0


def test_transcript_symlink_is_not_followed(live_host: LiveHost, tmp_path: Path) -> None:
    sid, _, _ = _setup(live_host)
    secret = tmp_path / "secret"
    secret.write_text("keep me")
    os.utime(secret, (0, 0))
    conv = live_host.home.group_dir("ag") / "conversations"
    conv.mkdir(exist_ok=True)
    os.symlink(secret, conv / f"{sid}.jsonl")
    later = datetime.now(UTC) + timedelta(days=40)
    [c] = live_host.sync(compact_home, live_host.home, live_host.host.db,
                         RetentionPolicy(30, "archive"), now=later, running=set())  # fmt: skip
    assert not c.transcript and secret.read_text() == "keep me"
    assert not list((live_host.home.root / "archive").rglob("*transcript*"))


def test_outbound_with_triggers_is_left_alone(live_host: LiveHost) -> None:
    _sid, paths, _ = _setup(live_host)
    out = sqlite3.connect(paths.outbound)
    out.execute("CREATE TRIGGER t AFTER DELETE ON messages_out BEGIN "
                "INSERT INTO session_state VALUES ('x', 'y', 'z'); END")  # fmt: skip
    out.commit()
    out.close()
    later = datetime.now(UTC) + timedelta(days=40)
    [c] = live_host.sync(compact_home, live_host.home, live_host.host.db,
                         RetentionPolicy(30, "prune"), now=later, running=set())  # fmt: skip
    assert c.outbound == 0 and any("triggers" in s for s in c.skipped)
    assert _ids(paths.outbound, "SELECT id FROM messages_out") == {"r1", "r2", "r3"}


def test_admin_sessions_compact_verb(tmp_path: Path) -> None:
    from carapace.config import Home

    live = LiveHost(Home(tmp_path / "home"))
    try:
        _sid, paths, ids = _setup(live)
    finally:
        live.close()
    r = CliRunner().invoke(main, ["admin", "--home", str(tmp_path / "home"), "sessions",
                                  "compact", "--days", "1", "--policy", "prune"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # rows from just now are younger than a day: nothing goes
    assert _ids(paths.inbound, "SELECT id FROM messages_in") == set(ids)


def test_running_host_retention_pass_spares_busy_sessions(tmp_path: Path) -> None:
    from carapace.config import Home, Settings
    from carapace.ops.runtime import retention_pass, start_retention

    live = LiveHost(Home(tmp_path / "home"),
                    Settings(runner_idle_exit_s=0, extra={"retention": {"days": 1}}))  # fmt: skip
    try:
        sid, paths, ids = _setup(live)
        for p in (paths.inbound, paths.outbound):  # everything is a week old
            c = sqlite3.connect(p)
            for table, col in (("messages_in", "timestamp"), ("messages_out", "timestamp"),
                               ("processing_ack", "status_changed"),
                               ("delivered", "delivered_at")):  # fmt: skip
                if c.execute("SELECT 1 FROM sqlite_master WHERE name=?", (table,)).fetchone():
                    c.execute(f"UPDATE {table} SET {col}='2000-01-01 00:00:00'")
            c.commit()
            c.close()
        assert live.host.pool.is_running(sid)  # the routed messages woke a (fake) runner
        [c] = live.call(retention_pass(live.host))
        assert (c.inbound, c.acks, c.outbound, c.delivered) == (2, 0, 0, 0)
        assert _ids(paths.inbound, "SELECT id FROM messages_in") == {ids[2]}
        # stop it; the exit drains r3 (its channel is unknown: failed, the agent is told and
        # woken once more), so stop until no runner is left
        for _ in range(50):
            live.call(live.host.pool.stop(sid, "idle"))
            live.call(asyncio.sleep(0.02))  # the exit's drain task runs
            if not live.host.pool.is_running(sid):
                break
        assert not live.host.pool.is_running(sid)
        [c] = live.call(retention_pass(live.host))
        assert (c.inbound, c.acks, c.outbound, c.delivered) == (0, 2, 2, 2)
        assert live.sync(start_retention, live.host) is True  # host.stop() cancels the loop
    finally:
        live.close()
    off = Settings(extra={"retention": {"policy": "off"}})
    live = LiveHost(Home(tmp_path / "home2"), off)
    try:
        assert live.sync(start_retention, live.host) is False
    finally:
        live.close()


def _old_done_sessions(
    tmp_path: Path, rows: dict[str, list[str]]
) -> tuple[Any, Any, dict[str, tuple[str, SessionPaths]]]:
    """A home whose sessions (by name) hold the given rows, completed 400 days ago: the
    home, its central DB and, per name, the session id and paths."""
    from carapace.bootstrap import init_home, open_home
    from carapace.config import Home
    from carapace.db import groups
    from carapace.db.session import init_session_folder, insert_message_in
    from carapace.db.sessions import create_session

    home = Home(tmp_path / "home")
    init_home(home)
    db, _ = open_home(home)
    ag = groups.list_agent_groups(db)[0].id
    old = sqlite_ts(datetime.now(UTC) - timedelta(days=400))
    made = {}
    for name, ids in rows.items():
        s = create_session(db, ag, None, name)
        paths = SessionPaths.of(home.data_dir, ag, s.id)
        init_session_folder(paths)
        conn = sqlite3.connect(paths.inbound, isolation_level=None)
        for mid in ids:
            insert_message_in(conn, {"id": mid, "kind": "chat", "timestamp": old,
                                     "status": "completed", "series_id": mid,
                                     "content": "{}"})  # fmt: skip
        conn.close()
        made[name] = (s.id, paths)
    return home, db, made


def test_a_session_its_agent_keeps_locked_is_skipped_and_the_rest_compacted(
    tmp_path: Path,
) -> None:
    """The agent may keep a read transaction open on its ``inbound.db`` for as long as it
    likes. A retention pass neither waits for it (its commit would hold PENDING, keeping
    the host's own readers out, for 5 s) nor gives up on the other sessions: the locked
    one is skipped with the reason, and compacted at a later pass."""
    home, db, made = _old_done_sessions(
        tmp_path, {name: [f"{name}-{i}" for i in range(3)] for name in ("locked", "free")}
    )
    (locked_id, locked), (free_id, _free) = made["locked"], made["free"]
    agent = sqlite3.connect(locked.inbound, isolation_level=None)
    agent.execute("BEGIN")
    agent.execute("SELECT COUNT(*) FROM messages_in").fetchone()
    try:
        done = {c.session_id: c for c in compact_home(
            home, db, RetentionPolicy(days=30, policy="prune"), running=set())}  # fmt: skip
    finally:
        agent.execute("ROLLBACK")
        agent.close()
    assert done[free_id].inbound == 2  # all but the newest row
    assert done[locked_id].inbound == 0
    assert any("locked" in why for why in done[locked_id].skipped)
    assert len(_ids(locked.inbound, "SELECT id FROM messages_in")) == 3
    again = {c.session_id: c for c in compact_home(
        home, db, RetentionPolicy(days=30, policy="prune"), running=set())}  # fmt: skip
    assert again[locked_id].inbound == 2
    db.close()


def _archived_ids(home_root: Path, table: str) -> list[str]:
    out: list[str] = []
    for f in sorted(home_root.glob(f"archive/*/*/*-{table}.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            out += [json.loads(line)["id"] for line in fh if line.strip()]
    return out


def test_rows_archived_by_a_pass_whose_commit_failed_are_archived_once(tmp_path: Path) -> None:
    """The archive is written before the delete commits (a crash between them keeps the
    rows twice, never none). A commit the agent's lock makes fail (the session skipped,
    its rows kept) took back what the pass had archived: the next pass archives them
    again, so each row is in the archive once."""
    home, db, made = _old_done_sessions(tmp_path, {"locked": [f"m{i}" for i in range(4)]})
    _sid, paths = made["locked"]
    policy = RetentionPolicy(days=30, policy="archive")
    agent = sqlite3.connect(paths.inbound, isolation_level=None)
    agent.execute("BEGIN")
    agent.execute("SELECT COUNT(*) FROM messages_in").fetchone()
    try:
        [done] = compact_home(home, db, policy, running=set())
    finally:
        agent.execute("ROLLBACK")
        agent.close()
    assert done.inbound == 0 and any("locked" in why for why in done.skipped)
    assert _archived_ids(home.root, "messages_in") == []  # taken back with the commit
    [again] = compact_home(home, db, policy, running=set())
    assert again.inbound == 3
    assert sorted(_archived_ids(home.root, "messages_in")) == ["m0", "m1", "m2"]
    db.close()
