"""Sweep decisions with an injected clock (spec §5, scenarios 8, 9, 39)."""

from __future__ import annotations

import logging
import os
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
    monkeypatch.setattr(rig.host.sessions, "set_work", no_room)  # the next due time too
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
