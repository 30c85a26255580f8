"""The series hook off the event loop, and a look whose cost does not grow with history.

The sweep ran the task-series hook on the event loop: every look at a session with a
task opened its ``inbound.db`` there, read every finished occurrence of the last three
days (a minutely task: 4,320 rows, ~20 ms; after weeks of rows ~90 ms) and handed a
series over with a durable commit (fsyncs) on the loop thread. Under the agent's read
lock that commit gave up, and the hand-over waited a minute for the hook's next retry.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sched_helpers import TaskRig

import carapace.db.connection as connection
from carapace.db.connection import transaction
from carapace.db.session import insert_message_in, open_inbound, open_outbound
from carapace.host.task_runs import SeriesSweep
from carapace.jsonutil import dumps
from carapace.timefmt import iso, sqlite_ts

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _history(trig: TaskRig, n: int, series: str = "task-m") -> None:
    """``n`` finished occurrences of a minutely series before ``T0`` and their acks, as a
    runner and an earlier host would have left them."""
    paths = trig.host.sessions.paths(trig.session)
    inb = open_inbound(paths)
    out = open_outbound(paths)
    try:
        with transaction(inb):
            for i in range(n):
                t = T0 - timedelta(minutes=n - i)
                insert_message_in(inb, {
                    "id": f"{series}@{i}", "kind": "task", "timestamp": sqlite_ts(t),
                    "process_after": iso(t), "status": "completed", "series_id": series,
                    "platform_id": "chan", "channel_type": "fake",
                    "content": dumps({"prompt": "report"}),
                })  # fmt: skip
        with transaction(out):
            out.executemany(
                "INSERT OR REPLACE INTO processing_ack VALUES (?, 'completed', ?)",
                [(f"{series}@{i}", sqlite_ts(T0 - timedelta(minutes=n - i)))
                 for i in range(n)],
            )  # fmt: skip
    finally:
        inb.close()
        out.close()


def _seen_by_hook(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(task rows handed to the hook, its thread) per call."""
    calls: list[tuple[int, int]] = []
    real = SeriesSweep.on_sweep_session

    def noting(self: SeriesSweep, ctx: Any) -> Any:
        tasks = getattr(ctx, "tasks", None)
        calls.append((len(tasks.rows) if tasks is not None else -1, threading.get_ident()))
        return real(self, ctx)

    monkeypatch.setattr(SeriesSweep, "on_sweep_session", noting)
    return calls


def test_the_series_hook_never_commits_on_the_event_loop(
    trig: TaskRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    commits: list[tuple[str, int]] = []
    real_commit = connection._commit

    def noting(conn: sqlite3.Connection) -> None:
        name = conn.execute("PRAGMA database_list").fetchone()[2]
        commits.append((name, threading.get_ident()))
        real_commit(conn)

    calls = _seen_by_hook(monkeypatch)
    trig.schedule("task-1", T0, "*/5 * * * *")
    monkeypatch.setattr(connection, "_commit", noting)
    trig.sweep(T0)  # handed over: the next occurrence is written
    trig.play_runner()
    trig.sweep(T0 + timedelta(minutes=1))  # the run recorded
    monkeypatch.setattr(connection, "_commit", real_commit)
    assert [r["process_after"] for r in trig.rows("recurrence IS NOT NULL")] == [
        iso(T0 + timedelta(minutes=5))
    ]
    assert [h["outcome"] for h in trig.history("task-1")] == ["ran"]
    assert calls and all(thread != loop_thread for _n, thread in calls)
    on_loop = [name for name, thread in commits if thread == loop_thread
               and name.endswith("inbound.db")]  # fmt: skip
    assert on_loop == []


def test_a_long_history_is_read_once_then_only_what_is_new(
    trig: TaskRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two days of a minutely task: the first look records what no earlier look did; every
    later one is handed only the rows it has not settled (the head, a new occurrence)."""
    _history(trig, 3000)
    trig.schedule("task-m", T0, "* * * * *")
    calls = _seen_by_hook(monkeypatch)
    trig.sweep(T0)
    assert calls[0][0] >= 3000
    assert len([h for h in trig.history("task-m") if h["outcome"] == "ran"]) == 3000
    for minute in range(1, 4):
        trig.play_runner()
        trig.sweep(T0 + timedelta(minutes=minute, seconds=1))
    assert max(n for n, _t in calls[1:]) <= 3, calls
    assert len([h for h in trig.history("task-m") if h["outcome"] == "ran"]) == 3003
    # a new host's first look reads only what the history does not hold, and records
    # nothing twice
    trig.restart()
    calls.clear()
    trig.play_runner()
    trig.sweep(T0 + timedelta(minutes=4, seconds=1))
    ran = [h["id"] for h in trig.history("task-m") if h["outcome"] == "ran"]
    assert len(ran) == len(set(ran)) == 3004
    assert 1 <= calls[0][0] <= 3, calls


def test_rows_whose_acks_could_not_be_read_are_looked_at_again(
    trig: TaskRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import carapace.host.sweep as sweep

    _history(trig, 5)
    trig.schedule("task-m", T0 + timedelta(hours=1), "0 * * * *")
    real = sweep.read_acks

    def refused(*a: Any, **k: Any) -> Any:
        raise sweep.OutboxRefused("outbound.db refused")

    monkeypatch.setattr(sweep, "read_acks", refused)
    trig.sweep(T0)
    assert trig.history("task-m") == []  # nothing known of the runs: nothing recorded
    monkeypatch.setattr(sweep, "read_acks", real)
    trig.host.sessions.work.set(trig.session.id, iso(T0))
    trig.sweep(T0 + timedelta(seconds=1))
    assert [h["outcome"] for h in trig.history("task-m")] == ["ran"] * 5


def test_a_series_due_under_the_agents_lock_is_handed_over_once_it_goes(trig: TaskRig) -> None:
    """The agent may hold a read transaction on its ``inbound.db`` for as long as it likes.
    The hand-over's commit waited for it on the loop, gave up and was tried again a minute
    later; on the session's writer thread it is set aside and made once the lock goes."""
    trig.schedule("task-l", T0, "*/5 * * * *")
    paths = trig.host.sessions.paths(trig.session)
    agent = sqlite3.connect(f"file:{paths.inbound}?mode=ro", uri=True, isolation_level=None)
    try:
        agent.execute("BEGIN")
        agent.execute("SELECT COUNT(*) FROM messages_in").fetchone()  # a shared lock held
        trig.clock.set(T0)
        trig.run(trig.host.sweep_once(T0))  # (it does not wait for the writes it started)
        assert [r["recurrence"] for r in trig.rows()] == ["*/5 * * * *"]  # not yet
    finally:
        agent.execute("COMMIT")
        agent.close()
    trig.run(trig.host.sessions.drain_writes())
    assert [(r["process_after"], r["recurrence"]) for r in trig.rows()] == [
        (iso(T0), None), (iso(T0 + timedelta(minutes=5)), "*/5 * * * *"),
    ]  # fmt: skip
