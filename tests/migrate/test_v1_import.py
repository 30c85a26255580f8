"""spec/v1-migration.md §5 scenarios (and §4 edge cases) against v1 DBs of several ages."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.config import Home
from carapace.db.central import open_central
from carapace.errors import ConfigError
from carapace.migrate.importer import migrate_v1
from carapace.migrate.report import Report
from carapace.testing.v1fixtures import (
    AGES,
    V1Tree,
    add_chat,
    add_group,
    add_message,
    add_task,
    make_v1_tree,
    set_router_state,
    set_session,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ID = r"-\d{13}-[a-z0-9]{1,6}$"


@pytest.fixture(params=AGES)
def v1(request: pytest.FixtureRequest, tmp_path: Path) -> V1Tree:
    return make_v1_tree(tmp_path / "v1", request.param)


@pytest.fixture
def final(tmp_path: Path) -> V1Tree:
    return make_v1_tree(tmp_path / "v1", "final")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


def run(tree: V1Tree, home: Home) -> Report:
    return migrate_v1(tree.root, home, now=NOW)


def central(home: Home) -> sqlite3.Connection:
    return open_central(home.central_db)


def rows(home: Home, sql: str, *args: object) -> list[sqlite3.Row]:
    conn = central(home)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_s1_whatsapp_group_with_trigger(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_group(c, "120363001@g.us", "Family", "whatsapp_family")
    c.close()
    report = run(v1, home)
    [ag] = rows(home, "SELECT * FROM agent_groups")
    assert re.match("ag" + ID, ag["id"]) and (ag["folder"], ag["name"]) == (
        "whatsapp_family",
        "Family",
    )
    assert ag["agent_provider"] is None
    [mg] = rows(home, "SELECT * FROM messaging_groups")
    assert re.match("mg" + ID, mg["id"])
    assert (mg["channel_type"], mg["platform_id"], mg["name"], mg["is_group"]) == (
        "whatsapp", "120363001@g.us", "Family", 1,
    )  # fmt: skip
    assert mg["unknown_sender_policy"] == "public"
    [w] = rows(home, "SELECT * FROM messaging_group_agents")
    assert re.match("mga" + ID, w["id"])
    assert (w["engage_mode"], w["engage_pattern"], w["sender_scope"], w["session_mode"]) == (
        "pattern", "@Andy", "all", "shared",
    )  # fmt: skip
    assert (w["ignored_message_policy"], w["priority"]) == ("accumulate", 0)
    [d] = rows(home, "SELECT * FROM agent_destinations")
    assert (d["local_name"], d["target_type"], d["target_id"]) == ("family", "channel", mg["id"])
    [cfg] = rows(home, "SELECT * FROM container_configs")
    assert cfg["additional_mounts"] == "[]" and cfg["skills"] == '"all"'
    assert report.summary()["registered_groups"] == {"imported": 1}
    assert home.group_dir("whatsapp_family").joinpath("CLAUDE.local.md").exists()


def test_s2_s3_main_groups_answer_everything(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "15551234567@s.whatsapp.net", "Main", "whatsapp_main", requires_trigger=0,
              is_main=1)  # fmt: skip
    add_group(c, "1555@s.whatsapp.net", "Legacy", "main", requires_trigger=1, is_main=1)
    c.close()
    run(final, home)
    got = rows(home, "SELECT mg.is_group, w.engage_pattern FROM messaging_group_agents w "
                     "JOIN messaging_groups mg ON mg.id = w.messaging_group_id")  # fmt: skip
    assert sorted(tuple(r) for r in got) == [(0, "."), (0, ".")]


def test_is_main_missing_column_uses_v1_backfill_rule(tmp_path: Path, home: Home) -> None:
    tree = make_v1_tree(tmp_path / "old", "2026-02-05")
    c = tree.db()
    add_group(c, "tg:42", "Me", "main")  # no requires_trigger, no is_main column
    add_group(c, "tg:-100", "Ops", "telegram_ops")
    c.close()
    run(tree, home)
    got = dict(
        tuple(r)
        for r in rows(
            home,
            "SELECT ag.folder, w.engage_pattern FROM "
            "messaging_group_agents w JOIN agent_groups ag "
            "ON ag.id = w.agent_group_id",
        )
    )
    assert got == {"main": ".", "telegram_ops": "@Andy"}
    assert [r[0] for r in rows(home, "SELECT user_id FROM user_roles WHERE role='owner'")] == [
        "telegram:42"
    ]


def test_s4_telegram_group_and_dm(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_group(c, "tg:-1001234567890", "Ops", "telegram_ops", requires_trigger=1)
    # folder 'main': on ages without is_main/requires_trigger, v1's backfill still finds it
    add_group(c, "tg:42", "Me", "main", requires_trigger=0, is_main=1)
    c.close()
    run(v1, home)
    got = rows(home, "SELECT mg.platform_id, mg.is_group, w.engage_pattern FROM "
                     "messaging_groups mg JOIN messaging_group_agents w "
                     "ON mg.id = w.messaging_group_id ORDER BY mg.platform_id")  # fmt: skip
    assert [tuple(r) for r in got] == [
        ("telegram:-1001234567890", 1, "@Andy"), ("telegram:42", 0, "."),
    ]  # fmt: skip


def test_s5_trigger_table(final: V1Tree, home: Home) -> None:
    c = final.db()
    for i, (trig, req) in enumerate([(".*", 1), ("   ", 1), ("@Bot", None), ("@Bot", 0)]):
        add_group(c, f"tg:{i + 1}", f"G{i}", f"g{i}", trig, requires_trigger=req)
    c.close()
    run(final, home)
    got = rows(home, "SELECT ag.folder, w.engage_mode, w.engage_pattern FROM "
                     "messaging_group_agents w JOIN agent_groups ag ON ag.id = w.agent_group_id "
                     "ORDER BY ag.folder")  # fmt: skip
    assert [tuple(r)[1:] for r in got] == [
        ("pattern", "."), ("mention", None), ("pattern", "@Bot"), ("pattern", "."),
    ]  # fmt: skip


def test_s6_s7_unknown_and_unparseable_jids(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "slack:C0ABC", "Chan", "slack_chan")
    add_group(c, "sig:group:abc", "Sig", "signal_grp")
    add_group(c, "justtext", "Bad", "bad_one")
    add_group(c, "dc:111", "Disc", "discord_main")
    c.close()
    report = run(final, home)
    mgs = {tuple(r) for r in rows(home, "SELECT channel_type, platform_id FROM messaging_groups")}
    assert mgs == {("slack", "slack:C0ABC"), ("sig", "sig:group:abc")}
    # unlike NanoClaw, the agent groups of unmappable chats are kept (unwired) and reported
    folders = {r[0] for r in rows(home, "SELECT folder FROM agent_groups")}
    assert folders == {"slack_chan", "signal_grp", "bad_one", "discord_main"}
    assert len(rows(home, "SELECT * FROM messaging_group_agents")) == 2
    needs = " ".join(a.problem for a in report.attention)
    assert "justtext" in needs and "guild" in needs and "no sig adapter" in needs
    assert "no slack adapter" not in needs  # slack has one: its chats are live
    assert report.fatal is None


def test_invalid_folders_are_skipped_and_reported(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:1", "Up", "../x")
    add_group(c, "tg:2", "Glob", "Global")
    add_group(c, "tg:3", "Sp", "a b")
    add_group(c, "tg:4", "Ok", "ok")
    c.close()
    report = run(final, home)
    assert [r[0] for r in rows(home, "SELECT folder FROM agent_groups")] == ["ok"]
    assert [e.outcome for e in report.of("registered_groups")] == [
        "skipped", "skipped", "skipped", "imported",
    ]  # fmt: skip
    assert len([a for a in report.attention if "v1 itself refused" in a.problem]) == 3


def test_only_bad_rows_is_a_failure(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:1", "Up", "../x")
    c.close()
    report = run(final, home)
    assert report.fatal
    assert rows(home, "SELECT * FROM agent_groups") == []


def test_s9_rerun_is_idempotent_and_keeps_user_changes(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "120363001@g.us", "Family", "whatsapp_family")
    c.close()
    run(final, home)
    before = {t: rows(home, f"SELECT * FROM {t}") for t in
              ("agent_groups", "messaging_groups", "messaging_group_agents", "sessions")}  # fmt: skip
    conn = central(home)
    conn.execute("UPDATE messaging_group_agents SET engage_pattern='hey'")
    conn.execute("UPDATE messaging_groups SET unknown_sender_policy='strict'")
    conn.close()
    c = final.db()
    c.execute("UPDATE registered_groups SET name='Renamed', trigger_pattern='@Zed'")
    c.close()
    report = run(final, home)
    assert report.summary()["registered_groups"] == {"reused": 1}
    for t, old in before.items():
        assert len(rows(home, f"SELECT * FROM {t}")) == len(old)
    [w] = rows(home, "SELECT engage_pattern FROM messaging_group_agents")
    [mg] = rows(home, "SELECT unknown_sender_policy FROM messaging_groups")
    [ag] = rows(home, "SELECT name FROM agent_groups")
    assert (w[0], mg[0], ag[0]) == ("hey", "strict", "Family")


def test_rerun_does_not_recreate_what_the_user_deleted(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:5", "A", "tg_a")
    c.close()
    run(final, home)
    conn = central(home)
    conn.execute("DELETE FROM messaging_group_agents")
    conn.close()
    report = run(final, home)
    assert rows(home, "SELECT * FROM messaging_group_agents") == []
    assert "deleted since" in report.of("registered_groups")[0].detail


def test_s10_existing_auto_created_chat(final: V1Tree, home: Home) -> None:
    conn = central(home)
    conn.execute("INSERT INTO messaging_groups (id, channel_type, platform_id, "
                 "unknown_sender_policy, created_at) VALUES ('mg-old', 'whatsapp', "
                 "'120363001@g.us', 'request_approval', '2026-01-01T00:00:00.000Z')")  # fmt: skip
    conn.close()
    c = final.db()
    add_group(c, "120363001@g.us", "Family", "whatsapp_family")
    c.close()
    run(final, home)
    [mg] = rows(home, "SELECT id, unknown_sender_policy FROM messaging_groups")
    assert tuple(mg) == ("mg-old", "public")
    assert len(rows(home, "SELECT * FROM messaging_group_agents")) == 1


def test_s10_variant_and_existing_folder_reused(final: V1Tree, home: Home) -> None:
    from carapace.bootstrap import init_home

    init_home(home, now=NOW)  # folder 'main' exists, cli chat wired
    c = final.db()
    add_group(c, "tg:42", "Other name", "main", requires_trigger=0)
    c.close()
    report = run(final, home)
    [ag] = rows(home, "SELECT name FROM agent_groups WHERE folder='main'")
    assert ag[0] == "Main"  # reused, not renamed
    assert "existing" in (report.of("registered_groups")[0].target or "")
    assert len(rows(home, "SELECT * FROM messaging_group_agents")) == 2


def test_s11_two_jids_one_chat(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:5", "A", "tg_a")
    add_group(c, "telegram:5", "B", "tg_b")
    c.close()
    report = run(final, home)
    [mg] = rows(home, "SELECT platform_id, name FROM messaging_groups")
    assert tuple(mg) == ("telegram:5", "A")
    assert len(rows(home, "SELECT * FROM messaging_group_agents")) == 2
    assert len(rows(home, "SELECT * FROM agent_groups")) == 2
    assert "more than one agent group" in report.of("registered_groups", "telegram:5")[0].detail


def test_s18_sessions_and_continuation(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "120363001@g.us", "Family", "whatsapp_family")
    set_session(c, "whatsapp_family", "abc-uuid")
    c.close()
    final.transcript("whatsapp_family", "abc-uuid")
    final.transcript("whatsapp_family", "newer-uuid")
    (final.root / "data/sessions/whatsapp_family/.claude/settings.json").write_text("{}")
    run(final, home)
    [s] = rows(home, "SELECT * FROM sessions")
    assert re.match("sess" + ID, s["id"])
    assert (s["thread_id"], s["status"], s["container_status"]) == (None, "active", "stopped")
    shared = home.sessions_dir / s["agent_group_id"] / ".claude-shared"
    assert (shared / "settings.json").exists()
    for sub in ("-workspace-group", "-workspace-agent"):
        assert (shared / "projects" / sub / "abc-uuid.jsonl").exists()
    folder = home.sessions_dir / s["agent_group_id"] / s["id"]
    assert (folder / "outbox").is_dir()
    inbound = sqlite3.connect(folder / "inbound.db")
    assert inbound.execute("SELECT * FROM session_routing").fetchall() == [
        (1, "whatsapp", "120363001@g.us", None)
    ]
    inbound.close()
    out = sqlite3.connect(folder / "outbound.db", isolation_level=None)
    [(value,)] = out.execute("SELECT value FROM session_state WHERE key='continuation:claude'")
    assert value == "abc-uuid"  # v1's sessions table wins (NanoClaw: the newest file)
    out.execute("UPDATE session_state SET value='moved-on'")
    out.close()
    run(final, home)  # a re-run never rewinds the conversation
    out = sqlite3.connect(folder / "outbound.db")
    assert out.execute("SELECT value FROM session_state").fetchone()[0] == "moved-on"
    out.close()
    assert len(rows(home, "SELECT * FROM sessions")) == 1


def test_s19_container_config(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:1", "A", "a", container_config=(
        '{"additionalMounts":[{"hostPath":"~/docs","readonly":false},'
        '{"hostPath":"/srv/data/"}],"timeout":600000}'))  # fmt: skip
    add_group(c, "tg:2", "B", "b", container_config="{bad json")
    add_group(c, "tg:3", "C", "c", container_config="[]")
    c.close()
    final.env("ASSISTANT_NAME=Andy\nTZ=UTC\nTELEGRAM_BOT_TOKEN=secret\n")
    report = run(final, home)
    cfg = {r["folder"]: r for r in rows(home, "SELECT ag.folder, cc.* FROM container_configs cc "
                                              "JOIN agent_groups ag ON ag.id = cc.agent_group_id")}  # fmt: skip
    assert json.loads(cfg["a"]["additional_mounts"]) == [
        {"hostPath": "~/docs", "readonly": False, "containerPath": "docs"},
        {"hostPath": "/srv/data/", "containerPath": "data", "readonly": True},
    ]
    assert json.loads(cfg["a"]["settings"]) == {"v1": {"timeout": 600000}}
    assert (cfg["a"]["cli_scope"], cfg["a"]["provider"], cfg["a"]["assistant_name"]) == (
        "group", None, "Andy",
    )  # fmt: skip
    assert cfg["b"]["additional_mounts"] == "[]"
    assert (home.group_dir("b") / ".v1-container-config.json").read_text() == "{bad json"
    assert cfg["c"]["additional_mounts"] == "[]"
    text = json.dumps(report.to_json())
    assert "TELEGRAM_BOT_TOKEN" in text and "secret" not in text


def test_group_folders_copied_without_overwriting(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:1", "A", "a")
    c.close()
    final.group_file("a", "CLAUDE.md", "# v1 memory")
    final.group_file("a", "notes/todo.md", "todo")
    final.group_file("a", "notes/CLAUDE.md", "nested")
    final.group_file("a", "logs/container.log", "noise")
    final.group_file("unregistered", "CLAUDE.md", "x")
    (final.root / "groups/a/link").symlink_to("/etc/passwd")
    report = run(final, home)
    g = home.group_dir("a")
    assert (g / "CLAUDE.local.md").read_text() == "# v1 memory"
    assert not (g / "CLAUDE.md").exists()  # composed by the host at the first start
    assert (g / "notes/todo.md").read_text() == "todo"
    assert (g / "notes/CLAUDE.md").read_text() == "nested"
    assert not (g / "logs").exists() and not (g / "link").exists()
    assert not home.group_dir("unregistered").exists()
    assert "symlink" in report.of("registered_groups")[0].detail


def test_s20_dropped_state_is_reported_history_archived(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:42", "Me", "telegram_main", requires_trigger=0, is_main=1)
    add_chat(c, "tg:42", "Me")
    add_chat(c, "__group_sync__")
    add_message(c, "tg:42", "m1", "hi", sender="42")
    add_message(c, "tg:42", "m2", "Andy: hello", is_bot_message=1,
                timestamp="2026-02-01T10:00:01.000Z")  # fmt: skip
    add_message(c, "tg:99", "m3", "orphan chat")
    set_router_state(c, "last_timestamp", "2026-02-01T10:00:01.000Z")
    set_router_state(c, "last_agent_timestamp", '{"tg:42":"2026-02-01T10:00:01.000Z"}')
    c.close()
    report = run(final, home)
    got = rows(home, "SELECT chat_jid, id, messaging_group_id IS NOT NULL, is_bot_message "
                     "FROM carapace_v1_messages ORDER BY id")  # fmt: skip
    assert [tuple(r) for r in got] == [("tg:42", "m1", 1, 0), ("tg:42", "m2", 1, 1),
                                       ("tg:99", "m3", 0, 0)]  # fmt: skip
    assert {e.source for e in report.entries if e.outcome == "dropped"} == {"chats", "router_state"}
    assert "1 chat metadata" in report.of("chats")[0].detail  # __group_sync__ ignored
    # history is not in any session's queue
    [s] = rows(home, "SELECT agent_group_id, id FROM sessions")
    inbound = sqlite3.connect(home.sessions_dir / s[0] / s[1] / "inbound.db")
    assert inbound.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0] == 0
    inbound.close()


def test_owner_from_self_chat_or_reported(final: V1Tree, home: Home, tmp_path: Path) -> None:
    c = final.db()
    add_group(c, "15551234567@s.whatsapp.net", "Main", "whatsapp_main", requires_trigger=0,
              is_main=1)  # fmt: skip
    c.close()
    run(final, home)
    assert [
        tuple(r) for r in rows(home, "SELECT user_id, role, agent_group_id FROM user_roles")
    ] == [("whatsapp:15551234567@s.whatsapp.net", "owner", None)]
    assert len(rows(home, "SELECT * FROM user_dms")) == 1
    other = make_v1_tree(tmp_path / "v1b")
    c = other.db()
    add_group(c, "120363001@g.us", "Family", "whatsapp_family")
    c.close()
    home2 = Home(tmp_path / "home2")
    report = run(other, home2)
    assert rows(home2, "SELECT * FROM user_roles") == []
    assert any(a.subject == "owner" for a in report.attention)


def test_refuses_non_v1(tmp_path: Path, home: Home) -> None:
    with pytest.raises(ConfigError):
        migrate_v1(tmp_path / "missing", home, now=NOW)
    (tmp_path / "store").mkdir()
    sqlite3.connect(tmp_path / "store" / "messages.db").execute(
        "CREATE TABLE x (a)"
    ).connection.close()
    with pytest.raises(ConfigError, match="registered_groups"):
        migrate_v1(tmp_path, home, now=NOW)


def test_bare_db_path_is_accepted(final: V1Tree, home: Home) -> None:
    c = final.db()
    add_group(c, "tg:1", "A", "a")
    add_task(c, "task-1", "a", "tg:1")
    c.close()
    report = migrate_v1(final.db_path, home, now=NOW)
    assert report.summary()["scheduled_tasks"] == {"imported": 1}
