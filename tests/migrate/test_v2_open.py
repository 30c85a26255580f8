"""A NanoClaw v2 folder opens in place: only carapace-* migrations run, nothing is rewritten."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from carapace.bootstrap import open_home
from carapace.config import Home
from carapace.db.migrations import MIGRATIONS, NANOCLAW_MIGRATION_NAMES
from carapace.db.session import SessionPaths, insert_message_in, open_inbound
from carapace.testing.v1fixtures import NANOCLAW_V2_MIGRATIONS, make_nanoclaw_v2_home

NANOCLAW_TABLES = (
    "agent_groups", "messaging_groups", "messaging_group_agents", "users", "user_roles",
    "agent_group_members", "user_dms", "sessions", "agent_destinations", "container_configs",
    "pending_approvals", "unregistered_senders",
)  # fmt: skip


def dump(db: Path, tables: tuple[str, ...]) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        out = {}
        for t in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
            if "settings" in cols:  # carapace's additive column; compare NanoClaw's columns
                cols.remove("settings")
            out[t] = [tuple(r) for r in conn.execute(f"SELECT {', '.join(cols)} FROM {t}")]
        return out
    finally:
        conn.close()


def test_nanoclaw_ledger_matches_carapace_names() -> None:
    assert tuple(NANOCLAW_MIGRATION_NAMES) == NANOCLAW_V2_MIGRATIONS


def test_v2_home_opens_with_only_carapace_migrations(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    before = dump(v2.central_db, NANOCLAW_TABLES)
    conn, ran = open_home(Home(v2.root))
    try:
        assert ran == [m.name for m in MIGRATIONS if m.name.startswith("carapace-")]
        ledger = [r[0] for r in conn.execute("SELECT name FROM schema_version ORDER BY version")]
        assert ledger[:13] == list(NANOCLAW_V2_MIGRATIONS)
    finally:
        conn.close()
    assert dump(v2.central_db, NANOCLAW_TABLES) == before
    conn, again = open_home(Home(v2.root))
    conn.close()
    assert again == []


def test_old_session_db_is_upgraded_lazily_and_writable(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    paths = SessionPaths.of(v2.root / "data", v2.agent_group_id, v2.session_id)
    outbound_before = paths.outbound.read_bytes()
    conn = open_inbound(paths)
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(messages_in)")]
        assert {"series_id", "trigger", "source_session_id", "on_wake"} <= set(cols)
        rows = conn.execute("SELECT id, seq, series_id, trigger, on_wake, status, content "
                            "FROM messages_in ORDER BY seq").fetchall()  # fmt: skip
        assert [tuple(r) for r in rows] == [
            ("msg-1", 2, "msg-1", 1, 0, "completed", '{"text":"hi"}'),
            ("task-1", 4, "task-1", 1, 0, "pending", '{"prompt":"p","script":null}'),
        ]
        seq = insert_message_in(
            conn,
            {"id": "msg-2", "kind": "chat", "timestamp": "2026-03-01T12:00:00.000Z",
             "platform_id": "telegram:42", "channel_type": "telegram",
             "content": '{"text":"again"}'},
            other_max=3,
        )  # fmt: skip
        assert seq == 6
        [(routing,)] = conn.execute("SELECT platform_id FROM session_routing")
        assert routing == "telegram:42"
    finally:
        conn.close()
    assert paths.outbound.read_bytes() == outbound_before  # the host never wrote the runner's file


def test_migrate_v1_into_a_v2_home_reuses_its_rows(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from carapace.migrate.importer import migrate_v1
    from carapace.testing.v1fixtures import add_group, add_task, make_v1_tree

    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    tree = make_v1_tree(tmp_path / "v1")
    c = tree.db()
    add_group(c, "tg:42", "Me", "main", requires_trigger=0, is_main=1)
    add_task(c, "task-9", "main", "tg:42")
    c.close()
    report = migrate_v1(tree.root, Home(v2.root), now=datetime(2026, 3, 1, tzinfo=UTC))
    [entry] = report.of("registered_groups")
    assert entry.outcome == "reused"
    assert v2.agent_group_id in (entry.target or "") and v2.session_id in (entry.target or "")
    assert report.of("owner")[0].outcome == "reused"
    conn = sqlite3.connect(v2.session_dir / "inbound.db")
    got = conn.execute("SELECT id, seq FROM messages_in ORDER BY seq").fetchall()
    conn.close()
    assert got == [("msg-1", 2), ("task-1", 4), ("task-9", 6)]
