"""Sweep decisions with an injected clock (spec §5, scenarios 8, 9, 39)."""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import Any

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.host.sweep import Claim, decide_stuck_action
from carapace.timefmt import sqlite_ts


def test_decide_stuck_action(clock: object) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    old = now - timedelta(seconds=61)
    assert (
        decide_stuck_action(now, now - timedelta(seconds=120), None, [Claim("m", old)])[0]
        == "kill-claim"
    )
    assert decide_stuck_action(now, now - timedelta(minutes=31), None, [])[0] == "kill-ceiling"
    bash = {"current_tool": "Bash", "tool_declared_timeout_ms": 2 * 3600 * 1000}
    assert decide_stuck_action(now, now - timedelta(minutes=31), bash, [Claim("m", old)])[0] == "ok"
    assert decide_stuck_action(now, None, None, [])[0] == "ok"
    assert decide_stuck_action(now, now - timedelta(seconds=5), None, [Claim("m", old)])[0] == "ok"


def _pending(rig: Rig) -> object:
    ag = rig.agent()
    mg = rig.chat()
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("hi", id="m")))
    [s] = rig.sessions()
    rig.run(rig.host.pool.wake_and_wait(s.id))  # the spawn's file work runs in a thread
    return s


def test_ack_sync_keeps_failed(rig: Rig) -> None:
    s = _pending(rig)
    for mid in ("m2", "m3"):
        rig.run(rig.host.route(make_event("x", id=mid)))
    ag = s.agent_group_id
    rig.ack(s, f"m:{ag}", "completed")
    rig.ack(s, f"m2:{ag}", "failed")
    rig.ack(s, f"m3:{ag}", "processing")
    rig.run(rig.host.sweep_once())
    st = {r["id"].split(":")[0]: r["status"] for r in rig.inbound(s)}
    assert st == {"m": "completed", "m2": "failed", "m3": "pending"}


def test_a_look_at_a_session_never_writes_its_inbound_file(rig: Rig) -> None:
    """The sweep's scan and the idle check run on worker threads beside the session's
    writer thread, which owns the only write connection to ``inbound.db``. A scan that
    copied acks there itself met that writer's lock under load ("database is locked"): the
    idle check failed, and its session counted as busy, so an idle runner kept its slot
    from queued work. A look only reads; the acks it finds are copied by the writer."""
    import sqlite3

    from carapace.host.host_runners import idle_scan
    from carapace.host.sweep import scan_session

    s = _pending(rig)
    mid = f"m:{s.agent_group_id}"
    rig.ack(s, mid, "completed")
    paths, now = rig.paths(s), rig.clock.now()
    other = sqlite3.connect(str(paths.inbound), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer is in a transaction
        scan = scan_session(paths, now)
        [(sid, since, ok)] = idle_scan([(s.id, paths, now - timedelta(seconds=5))], now)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (scan.due_now, scan.claims, scan.done) == (False, {}, {mid: "completed"})
    assert (sid, ok) == (s.id, True) and since is not None  # idle: its slot may be yielded
    assert [r["status"] for r in rig.inbound(s)] == ["pending"]  # the look wrote nothing
    rig.run(rig.host.sweep_once())  # the sweep has the writer copy what it found
    assert [r["status"] for r in rig.inbound(s)] == ["completed"]


def test_a_claim_reset_meeting_a_lock_changes_nothing_and_is_tried_again(rig: Rig) -> None:
    """A dead runner's claims are reset on an outbox reader thread with a connection of
    its own, beside the session's writer and readers. Meeting a reader's lock, each row's
    try was an autocommit that waited out the 5 s busy timeout, holding one of the few
    outbox threads every delivery reads with. Now the reset is one transaction whose commit
    gives up at once: under a lock it changes nothing, and the claims stay for the next
    look, which counts the try once."""
    import sqlite3

    from carapace.host.sweep import reset_claims

    s = _pending(rig)
    mid = f"m:{s.agent_group_id}"
    rig.run(rig.host.pool.stop(s.id, "test"))
    rig.settle()
    rig.ack(s, mid, "processing", sqlite_ts(rig.clock.now() - timedelta(minutes=5)))
    paths, now = rig.paths(s), rig.clock.now()
    reader = sqlite3.connect(str(paths.inbound), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages_in").fetchone()  # a shared lock
        started = time.perf_counter()
        assert reset_claims(paths, now, 5, count_try=True) == ([], [])
        took = time.perf_counter() - started
        reader.execute("ROLLBACK")
    finally:
        reader.close()
    assert took < 1.0, f"the reset waited {took:.2f} s on the lock"  # (an outbox thread)
    assert [r["tries"] for r in rig.inbound(s)] == [0]
    assert rig.acks(s) == {mid: "processing"}  # kept for the next look
    assert reset_claims(paths, now, 5, count_try=True) == ([mid], [])
    assert [r["tries"] for r in rig.inbound(s)] == [1] and rig.acks(s) == {}


def test_crash_retry_budget(rig: Rig) -> None:
    s = _pending(rig)
    mid = f"m:{s.agent_group_id}"
    handle = rig.backend.handles[s.id]
    expected = [5, 10, 20, 40, 80]
    for tries in range(5):
        rig.ack(s, mid, "processing", sqlite_ts(rig.clock.now() - timedelta(hours=2)))
        handle.exit(1)  # the runner dies holding the claim
        rig.settle()
        [row] = rig.inbound(s)
        assert row["tries"] == tries + 1 and row["status"] == "pending"
        assert rig.inbound(s.__class__ and s, "SELECT 1 FROM messages_in") and True
        rig.clock.advance(expected[tries] + 1)
        rig.backend.handles.pop(s.id, None)
        rig.host._health.clear()
        report = rig.run(rig.host.sweep_once())
        assert s.id in report.woken
        rig.run(rig.host.pool.wake_and_wait(s.id))
        handle = rig.backend.handles[s.id]
    rig.ack(s, mid, "processing", sqlite_ts(rig.clock.now()))
    handle.exit(1)
    rig.settle()
    assert rig.inbound(s)[0]["status"] == "failed"


def test_sweep_kills_stuck_runner_but_not_a_fresh_one(rig: Rig) -> None:
    s = _pending(rig)
    mid = f"m:{s.agent_group_id}"
    # a stale claim from before this runner started: ignored (fixes the kill-the-fresh-runner race)
    rig.ack(s, mid, "processing", sqlite_ts(rig.clock.now() - timedelta(hours=1)))
    rig.clock.advance(120)
    assert rig.run(rig.host.sweep_once()).killed == []
    # a claim of this runner, 61 s old, no heartbeat since: killed, a try counted
    rig.ack(s, mid, "processing", sqlite_ts(rig.clock.now()))
    hb = rig.paths(s).heartbeat
    hb.touch()
    t = (rig.clock.now() - timedelta(seconds=30)).timestamp()
    os.utime(hb, (t, t))
    rig.clock.advance(61)
    report = rig.run(rig.host.sweep_once())
    assert report.killed == [(s.id, "kill-claim")]
    rig.settle()
    assert rig.inbound(s)[0]["tries"] == 1


def test_process_after_due_wakes_and_index(rig: Rig) -> None:
    s = _pending(rig)
    handle = rig.backend.handles[s.id]
    handle.exit(0)
    rig.settle()
    rig.ack(s, f"m:{s.agent_group_id}", "completed")
    rig.reply(s, {"action": "schedule_task", "taskId": "task-9", "prompt": "p",
                  "processAfter": (rig.clock.now() + timedelta(minutes=5)).isoformat()},
              kind="system")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    rig.run(rig.host.sweep_once())
    due = rig.db.execute("SELECT next_due FROM carapace_session_work").fetchall()
    assert len(due) == 1 and due[0][0] > rig.clock.now().isoformat()[:19]
    rig.backend.started.clear()
    rig.clock.advance(301)
    report = rig.run(rig.host.sweep_once())
    assert report.woken == [s.id]
    rig.run(rig.host.pool.wake_and_wait(s.id))  # the spawn's file work runs in a thread
    # nothing pending and no runner: the session leaves the index
    rig.backend.handles[s.id].exit(0) if s.id in rig.backend.handles else None
    rig.settle()
    rig.ack(s, "task-9", "completed")
    rig.run(rig.host.sweep_once(rig.clock.now()))
    assert rig.db.execute("SELECT COUNT(*) FROM carapace_session_work").fetchone()[0] == 0


def test_a_failing_sweep_backs_off_instead_of_spinning(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep that keeps failing (a full disk: nothing can be written, not even the next
    due time) waited 0 s between passes and logged a traceback each time (3,000 in a 10 s
    disk-full window). Failed passes now back off, doubling up to the safety tick, and a
    full disk is one log line, not a traceback."""
    import asyncio
    import sqlite3

    from carapace.host import host_sweep

    ag = rig.agent()
    mg = rig.chat("chan")
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("hi", platform_id="chan", id="m1")))

    async def full(*_a: Any, **_k: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    waits: list[float] = []

    async def pause(seconds: float) -> None:
        waits.append(seconds)
        assert rig.host._sweep_event is not None
        rig.host._sweep_event.set()  # a kick during the backoff: the next pass follows it
        if len(waits) >= 9:
            rig.host._stopping = True

    def no_room(*_a: Any, **_k: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(host_sweep, "sweep_session", full)
    monkeypatch.setattr(rig.host.sessions.work, "set", no_room)  # the next due time too
    monkeypatch.setattr(host_sweep, "_pause", pause)
    rig.host._sweep_event = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="carapace.host.host"):
        rig.run(host_sweep.sweep_loop(rig.host))
    rig.host._stopping = False
    lines = caplog.records
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    failures = [r for r in lines if "sweep of session" in r.getMessage()]
    assert failures and all(r.exc_info is None and "no space left" in r.getMessage()
                            for r in failures)  # fmt: skip


def test_a_work_mark_the_disk_refuses_is_kept_until_it_can_be_written(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that exits while the disk is full leaves work (its claims to retry): the
    mark the central DB refused is kept in memory, counted by the sweep, written later."""
    import sqlite3

    from carapace.host import work_index as sessions_mod

    real = sessions_mod.mark_session_work

    def full(*_a: Any, **_k: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    mgr = rig.host.sessions
    now = rig.clock.now()
    monkeypatch.setattr(sessions_mod, "mark_session_work", full)
    mgr.work.mark("sess-x", "2000-01-01T00:00:00.000Z")
    assert "sess-x" in mgr.work.due(now)  # the sweep sees it though the DB does not have it
    assert mgr.work.next_due() == "2000-01-01T00:00:00.000Z"
    monkeypatch.setattr(sessions_mod, "mark_session_work", real)
    assert "sess-x" in mgr.work.due(now)  # written now
    assert mgr.work._unmarked == {}
    [(due,)] = rig.db.execute(
        "SELECT next_due FROM carapace_session_work WHERE session_id='sess-x'"
    ).fetchall()
    assert due == "2000-01-01T00:00:00.000Z"


def _work_writes(rig: Rig) -> list[str]:
    seen: list[str] = []
    rig.db.set_trace_callback(
        lambda sql: seen.append(sql) if "carapace_session_work" in sql and "SELECT" not in sql
        else None
    )  # fmt: skip
    return seen


def _index(rig: Rig, sid: str) -> str | None:
    row = rig.db.execute(
        "SELECT next_due FROM carapace_session_work WHERE session_id=?", (sid,)
    ).fetchone()
    return None if row is None else str(row[0])


def test_a_work_mark_is_written_only_when_it_moves_the_session_earlier(rig: Rig) -> None:
    """Issue 19: a routed message marked its session in the work index with a central
    write each time. A mark no earlier than one the index is known to hold is skipped;
    WorkMarks.set (the sweep moving a due later, or dropping it) is the only way a due gets
    later, and after it the next mark is written again."""
    mgr = rig.host.sessions
    writes = _work_writes(rig)
    mgr.work.mark("sess-m", "2030-01-01T00:00:05.000Z")
    mgr.work.mark("sess-m", "2030-01-01T00:00:06.000Z")  # later: the index holds 05
    mgr.work.mark("sess-m", "2030-01-01T00:00:05.000Z")  # the same
    assert len(writes) == 1 and _index(rig, "sess-m") == "2030-01-01T00:00:05.000Z"
    mgr.work.mark("sess-m", "2030-01-01T00:00:04.000Z")  # earlier: written
    assert len(writes) == 2 and _index(rig, "sess-m") == "2030-01-01T00:00:04.000Z"
    mgr.work.set("sess-m", "2030-01-01T00:10:00.000Z")  # the sweep moves it later
    mgr.work.mark("sess-m", "2030-01-01T00:00:07.000Z")  # earlier than the index now
    assert _index(rig, "sess-m") == "2030-01-01T00:00:07.000Z"
    mgr.work.set("sess-m", None)  # dropped: any mark is written
    mgr.work.mark("sess-m", "2030-01-01T00:20:00.000Z")
    assert _index(rig, "sess-m") == "2030-01-01T00:20:00.000Z"
    rig.db.set_trace_callback(None)


def test_a_work_mark_inside_a_rolled_back_transaction_is_not_trusted(rig: Rig) -> None:
    from carapace.db.connection import transaction

    mgr = rig.host.sessions
    with pytest.raises(RuntimeError), transaction(rig.db):
        mgr.work.mark("sess-r", "2030-01-01T00:00:05.000Z")
        raise RuntimeError("rolled back")
    assert _index(rig, "sess-r") is None
    mgr.work.mark("sess-r", "2030-01-01T00:00:09.000Z")  # not skipped: the first never held
    assert _index(rig, "sess-r") == "2030-01-01T00:00:09.000Z"


def test_routed_messages_write_the_work_index_and_last_active_once_a_second(rig: Rig) -> None:
    """Ten messages within a second: at most one work mark and one last_active write (the
    first message's); a message a second and a half later writes last_active again. Every
    message is stored, and its session is in the work index."""
    from carapace.timefmt import iso

    rig.wire(rig.chat(), rig.agent())
    writes: list[str] = []
    touched: list[str] = []

    def trace(sql: str) -> None:
        if "carapace_session_work" in sql and "SELECT" not in sql:
            writes.append(sql)
        if "SET last_active" in sql:
            touched.append(sql)

    rig.db.set_trace_callback(trace)
    sids = set()
    for i in range(10):
        r = rig.run(rig.host.route(make_event(f"m{i}", id=f"m{i}")))
        sids |= {x.session_id for x in r.routed}
    [sid] = sids
    rig.run(rig.host.sessions.drain_writes())
    first = iso(rig.clock.now())
    spawn_touch = sum("last_active" in w for w in touched)  # the runner's start writes it too
    assert len(writes) <= 2 and spawn_touch <= 2, (writes, touched)
    routed_touches = len(touched)
    rig.clock.advance(1.5)
    rig.run(rig.host.route(make_event("later", id="later")))
    rig.run(rig.host.sessions.drain_writes())
    rig.db.set_trace_callback(None)
    assert len(touched) >= routed_touches + 1
    [(last,)] = rig.db.execute("SELECT last_active FROM sessions WHERE id=?", (sid,)).fetchall()
    assert last > first
    assert _index(rig, sid) is not None
    paths = rig.host.sessions.paths(rig.host.sessions.get(sid))
    import sqlite3

    conn = sqlite3.connect(paths.inbound)
    try:
        ids = {r[0].split(":")[0] for r in conn.execute("SELECT id FROM messages_in")}
    finally:
        conn.close()
    assert {f"m{i}" for i in range(10)} | {"later"} <= ids


def test_the_series_hook_runs_only_for_sessions_with_tasks(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep opened an ``inbound.db`` connection on the event loop for every session it
    visited, for the task-series hook. A session with no task and no recurring row skips
    it; one with a task still gets it (its run is recorded, its series handed over)."""
    from carapace.host.task_runs import SeriesSweep
    from carapace.timefmt import iso

    calls: list[str] = []
    real = SeriesSweep.on_sweep_session

    def noting(self: SeriesSweep, ctx: Any) -> Any:
        calls.append(ctx.session.id)
        return real(self, ctx)

    monkeypatch.setattr(SeriesSweep, "on_sweep_session", noting)
    s = _pending(rig)
    rig.backend.handles[s.id].exit(0)
    rig.settle()
    rig.host.sessions.work.set(s.id, iso(rig.clock.now()))
    report = rig.run(rig.host.sweep_once())
    assert s.id in report.visited and calls == []
    rig.reply(s, {"action": "schedule_task", "taskId": "task-7", "prompt": "p",
                  "processAfter": (rig.clock.now() + timedelta(minutes=5)).isoformat()},
              kind="system")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    rig.host.sessions.work.set(s.id, iso(rig.clock.now()))
    report = rig.run(rig.host.sweep_once())
    assert s.id in report.visited and calls == [s.id]
