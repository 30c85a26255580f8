"""Scheduled tasks and their run logs (spec/v1-migration.md §5 S12–S17, §4 items 8–16)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.config import Home
from carapace.db.central import open_central
from carapace.migrate.importer import migrate_v1
from carapace.migrate.report import Report
from carapace.testing.v1fixtures import AGES, V1Tree, add_group, add_run_log, add_task, make_v1_tree

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAMILY = "120363001@g.us"


@pytest.fixture(params=AGES)
def v1(request: pytest.FixtureRequest, tmp_path: Path) -> V1Tree:
    tree = make_v1_tree(tmp_path / "v1", request.param)
    c = tree.db()
    add_group(c, FAMILY, "Family", "whatsapp_family")
    c.close()
    return tree


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


def run(tree: V1Tree, home: Home) -> Report:
    return migrate_v1(tree.root, home, now=NOW)


def tasks(home: Home) -> dict[str, sqlite3.Row]:
    """Every messages_in row of every session, by id."""
    out: dict[str, sqlite3.Row] = {}
    for inbound in sorted(home.sessions_dir.glob("*/*/inbound.db")):
        conn = sqlite3.connect(inbound)
        conn.row_factory = sqlite3.Row
        out.update({r["id"]: r for r in conn.execute("SELECT * FROM messages_in ORDER BY seq")})
        conn.close()
    return out


def test_s12_active_cron_task(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_task(c, "task-1", "whatsapp_family", FAMILY)
    c.close()
    report = run(v1, home)
    row = tasks(home)["task-1"]
    assert (row["seq"], row["kind"], row["status"], row["tries"]) == (2, "task", "pending", 0)
    assert (row["process_after"], row["recurrence"], row["series_id"]) == (
        "2026-06-01T07:00:00.000Z", "0 9 * * *", "task-1",
    )  # fmt: skip
    assert (row["platform_id"], row["channel_type"], row["thread_id"]) == (
        FAMILY, "whatsapp", None,
    )  # fmt: skip
    assert (row["trigger"], row["on_wake"], row["timestamp"]) == (1, 0, "2026-03-01 12:00:00")
    content = json.loads(row["content"])
    assert list(content)[:2] == ["prompt", "script"]
    assert (content["prompt"], content["script"]) == ("Daily summary", None)
    assert content["migrated_from_v1"]["original_id"] == "task-1"
    assert report.summary()["scheduled_tasks"] == {"imported": 1}
    conn = open_central(home.central_db)
    [(_sid, due)] = conn.execute("SELECT session_id, next_due FROM carapace_session_work")
    conn.close()
    assert due == "2026-06-01T07:00:00.000Z"


def test_s13_interval_tasks_are_converted_not_dropped(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    nr = "2026-06-01T07:05:00.000Z"
    values = ["3600000", "15m", "2h", "3d", "90m", "30s", "86400000", "0"]
    for i, v in enumerate(values):
        add_task(c, f"t{i}", "whatsapp_family", FAMILY, schedule_type="interval",
                 schedule_value=v, next_run=nr)  # fmt: skip
    c.close()
    report = run(v1, home)
    got = {k: (r["status"], r["recurrence"], r["process_after"]) for k, r in tasks(home).items()}
    assert got == {
        "t0": ("pending", "5 * * * *", nr),
        "t1": ("pending", "5/15 * * * *", nr),
        "t2": ("pending", "5 1/2 * * *", nr),
        "t3": ("pending", "@every 259200s", nr),
        "t4": ("pending", "@every 5400s", nr),
        "t5": ("pending", "@every 30s", nr),
        "t6": ("pending", "5 7 * * *", nr),
        "t7": ("paused", None, nr),  # a zero interval: kept, paused, reported
    }
    assert any("t7" in a.subject for a in report.attention)


def test_s14_once_tasks(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_task(c, "past", "whatsapp_family", FAMILY, schedule_type="once",
             schedule_value="2025-01-01T00:00:00", next_run="2025-01-01T00:00:00.000Z")  # fmt: skip
    add_task(c, "local", "whatsapp_family", FAMILY, schedule_type="once",
             schedule_value="2026-02-01T15:30:00", next_run=None)  # fmt: skip
    add_task(c, "weekly", "whatsapp_family", FAMILY, schedule_type="weekly", schedule_value="x")
    c.close()
    v1.env("TZ=Europe/Berlin\n")
    report = run(v1, home)
    got = tasks(home)
    assert (got["past"]["process_after"], got["past"]["recurrence"]) == (
        "2025-01-01T00:00:00.000Z", None,
    )  # fmt: skip
    assert got["local"]["process_after"] == "2026-02-01T14:30:00.000Z"  # Berlin → UTC
    assert got["weekly"]["status"] == "paused"
    assert any(a.subject == "time zone" for a in report.attention)


def test_s15_inactive_tasks_are_kept(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_task(c, "p", "whatsapp_family", FAMILY, status="paused")
    add_task(c, "d", "whatsapp_family", FAMILY, schedule_type="once", schedule_value="2026-01-01T10:00:00",
             next_run=None, status="completed", last_run="2026-01-01T10:00:02.000Z",
             last_result="sent")  # fmt: skip
    add_task(c, "a", "whatsapp_family", FAMILY)
    c.close()
    report = run(v1, home)
    got = tasks(home)
    assert (got["p"]["status"], got["p"]["recurrence"]) == ("paused", "0 9 * * *")
    assert (got["d"]["status"], got["d"]["recurrence"]) == ("completed", None)
    assert got["d"]["process_after"] == "2026-01-01T10:00:02.000Z"
    assert json.loads(got["d"]["content"])["migrated_from_v1"]["last_result"] == "sent"
    assert [r["seq"] for r in got.values()] == [2, 4, 6]
    assert report.summary()["scheduled_tasks"] == {"imported": 1, "kept": 2}


def test_s16_unresolvable_tasks_are_reported(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_task(c, "ghost", "ghost", FAMILY)
    add_task(c, "nochat", "whatsapp_family", "tg:77")
    add_task(c, "dm", "whatsapp_family", "dc:123")
    c.close()
    report = run(v1, home)
    assert tasks(home) == {}
    assert [e.outcome for e in report.of("scheduled_tasks")] == ["skipped"] * 3
    subjects = {a.subject for a in report.attention}
    assert {"task ghost", "task nochat", "task dm"} <= subjects


def test_task_in_a_chat_wired_elsewhere(tmp_path: Path, home: Home) -> None:
    tree = make_v1_tree(tmp_path / "v1")
    c = tree.db()
    add_group(c, FAMILY, "Family", "whatsapp_family")
    add_group(c, "tg:1", "Other", "other")
    add_task(c, "x", "other", FAMILY)
    c.close()
    report = run(tree, home)
    assert tasks(home)["x"]["status"] == "pending"
    assert "not wired" in report.of("scheduled_tasks", "x")[0].detail


def test_s17_seq_idempotence_and_clash(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_task(c, "task-1", "whatsapp_family", FAMILY)
    add_task(c, "task-2", "whatsapp_family", FAMILY, schedule_value="0 10 * * *")
    c.close()
    run(v1, home)
    assert [r["seq"] for r in tasks(home).values()] == [2, 4]
    report = run(v1, home)
    assert report.summary()["scheduled_tasks"] == {"reused": 2}
    assert len(tasks(home)) == 2


def test_s17_id_clash_with_a_chat_row(tmp_path: Path, home: Home) -> None:
    tree = make_v1_tree(tmp_path / "v1")
    c = tree.db()
    add_group(c, FAMILY, "Family", "whatsapp_family")
    c.close()
    run(tree, home)
    [inbound] = home.sessions_dir.glob("*/*/inbound.db")
    conn = sqlite3.connect(inbound, isolation_level=None)
    conn.execute("INSERT INTO messages_in (id, seq, kind, timestamp, content) "
                 "VALUES ('task-1', 2, 'chat', 'now', '{}')")  # fmt: skip
    conn.close()
    c = tree.db()
    add_task(c, "task-1", "whatsapp_family", FAMILY)
    c.close()
    report = run(tree, home)
    assert report.of("scheduled_tasks")[0].outcome == "failed"
    assert tasks(home)["task-1"]["kind"] == "chat"


def test_run_logs_become_task_history(v1: V1Tree, home: Home) -> None:
    c = v1.db()
    add_task(c, "task-1", "whatsapp_family", FAMILY)
    add_run_log(c, "task-1", "2026-02-01T09:00:00.000Z")
    add_run_log(c, "task-1", "2026-02-02T09:00:00.000Z", status="error", result=None,
                error="boom")  # fmt: skip
    add_run_log(c, "gone", "2026-02-02T09:00:00.000Z")  # orphan (FKs were off)
    c.close()
    run(v1, home)
    run(v1, home)
    conn = open_central(home.central_db)
    got = conn.execute("SELECT series_id, outcome, detail, session_id IS NOT NULL, duration_ms "
                       "FROM carapace_task_runs ORDER BY series_id, run_at").fetchall()  # fmt: skip
    conn.close()
    assert [tuple(r) for r in got] == [
        ("gone", "ran", "done", 0, 1200),
        ("task-1", "ran", "done", 1, 1200),
        ("task-1", "failed", "boom", 1, 1200),
    ]
