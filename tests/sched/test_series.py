"""Task series: next from the scheduled time, catch-up policies, claim-once, whole-series ops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sched_helpers import TaskRig

from carapace.db.session import open_inbound
from carapace.errors import ValidationError
from carapace.sched.series import (
    first_after,
    next_occurrence,
    occurrence_id,
    plan_catch_up,
    validate_recurrence,
)
from carapace.timefmt import iso

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(h: int, m: int = 0, s: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, h, m, s, tzinfo=UTC)


# -- pure ------------------------------------------------------------------------------------


def test_next_from_scheduled_time_not_now() -> None:
    assert next_occurrence("0 * * * *", "UTC", at(10)) == at(11)
    assert next_occurrence("@every 90s", "UTC", at(10, 0, 10)) == at(10, 1, 40)
    assert first_after("@every 90s", "UTC", at(10, 0, 10), at(10, 5)) == at(10, 6, 10)
    assert first_after("*/15 * * * *", "UTC", at(10), at(10, 20)) == at(10, 30)


def test_dst_spring_forward_new_york() -> None:
    ny = "America/New_York"
    # 9:00 EST on Sat 7 Mar 2026 = 14:00Z; 9:00 EDT on Sun 8 Mar = 13:00Z
    assert next_occurrence("0 9 * * *", ny, datetime(2026, 3, 7, 14, tzinfo=UTC)) == datetime(
        2026, 3, 8, 13, tzinfo=UTC
    )
    # fall back: 9:00 EDT Sat 31 Oct = 13:00Z; 9:00 EST Sun 1 Nov = 14:00Z
    assert next_occurrence("0 9 * * *", ny, datetime(2026, 10, 31, 13, tzinfo=UTC)) == datetime(
        2026, 11, 1, 14, tzinfo=UTC
    )
    # hourly across the gap: 01:00 EST (06:00Z) -> 03:00 EDT (07:00Z), one real hour
    assert next_occurrence("0 * * * *", ny, datetime(2026, 3, 8, 6, tzinfo=UTC)) == datetime(
        2026, 3, 8, 7, tzinfo=UTC
    )


def test_validate_recurrence() -> None:
    validate_recurrence("@every 60s")
    validate_recurrence("*/5 * * * *")
    for bad in ("@every 0s", "@every x", "61 * * * *"):
        with pytest.raises(ValidationError):
            validate_recurrence(bad)


def test_plan_catch_up() -> None:
    due = [at(10), at(11), at(12)]
    assert plan_catch_up("skip", due, [False, False, True]) == ([at(12)], [at(10), at(11)])
    assert plan_catch_up("latest", due, [False, False, False]) == ([at(12)], [at(10), at(11)])
    assert plan_catch_up("latest", due, [False, False, True]) == ([at(12)], [at(10), at(11)])
    assert plan_catch_up("all", due, [False, False, False]) == (due, [])


# -- with a host -----------------------------------------------------------------------------


def test_one_minute_cron_over_an_hour(trig: TaskRig) -> None:
    trig.schedule("task-1", T0, "* * * * *")
    t = T0
    while t <= T0 + timedelta(minutes=59, seconds=50):
        trig.sweep(t)
        trig.play_runner()
        t += timedelta(seconds=7)
    trig.sweep(t)
    rows = trig.rows()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert {r["series_id"] for r in rows} == {"task-1"}
    hour = [r for r in rows if r["process_after"] < iso(T0 + timedelta(hours=1))]
    assert len(hour) == 60
    assert [r["process_after"] for r in hour] == [iso(T0 + timedelta(minutes=i)) for i in range(60)]
    ran = [h for h in trig.history("task-1") if h["outcome"] == "ran"]
    assert len(ran) == 60 and not [h for h in trig.history("task-1") if h["outcome"] != "ran"]


def _down_over(trig: TaskRig, policy: str, hours: int = 3) -> None:
    trig.schedule("task-h", at(9), "0 * * * *", catchUp=policy)
    trig.sweep(at(9))
    trig.play_runner()
    trig.sweep(at(9, 0, 5))
    trig.restart()  # the host is down from 09:00:05 ...
    trig.sweep(at(9 + hours, 30, 30))  # ... to 30 minutes after the last missed occurrence


def _pending(trig: TaskRig) -> list[tuple[str, str | None]]:
    return [(r["process_after"], r["recurrence"]) for r in trig.rows("status='pending'")]


def test_restart_gap_skip(trig: TaskRig) -> None:
    _down_over(trig, "skip")
    assert _pending(trig) == [(iso(at(13)), "0 * * * *")]
    outcomes = [(h["scheduled_for"], h["outcome"]) for h in trig.history("task-h")]
    assert outcomes == [(iso(at(9)), "ran")] + [(iso(at(h)), "missed") for h in (10, 11, 12)]


def test_restart_gap_latest(trig: TaskRig) -> None:
    _down_over(trig, "latest")
    assert _pending(trig) == [(iso(at(12)), None), (iso(at(13)), "0 * * * *")]
    missed = [h["scheduled_for"] for h in trig.history("task-h") if h["outcome"] == "missed"]
    assert missed == [iso(at(10)), iso(at(11))]
    trig.play_runner()
    trig.sweep(at(12, 32))
    assert [h["outcome"] for h in trig.history("task-h")].count("ran") == 2


def test_restart_gap_all_bounded(trig: TaskRig) -> None:
    _down_over(trig, "all")
    assert _pending(trig) == [(iso(at(h)), None) for h in (10, 11, 12)] + [
        (iso(at(13)), "0 * * * *")
    ]
    assert not [h for h in trig.history("task-h") if h["outcome"] == "missed"]


def test_restart_gap_all_is_bounded_to_ten(trig: TaskRig) -> None:
    trig.schedule("task-b", at(0), "0 * * * *", catchUp="all")
    trig.sweep(at(0))
    trig.play_runner()
    trig.restart()
    trig.sweep(at(15, 30))  # 01:00 .. 15:00 passed: 15 occurrences
    runs = [r for r in trig.rows("status='pending' AND recurrence IS NULL")]
    assert [r["process_after"] for r in runs] == [iso(at(h)) for h in range(6, 16)]
    missed = [h["scheduled_for"] for h in trig.history("task-b") if h["outcome"] == "missed"]
    assert missed == [iso(at(h)) for h in range(1, 6)]


def test_one_shot_overdue_runs_late(trig: TaskRig) -> None:
    trig.schedule("task-o", at(12, 5))
    trig.restart()
    report = trig.sweep(at(15))
    assert report.woken == [trig.session.id]
    assert _pending(trig) == [(iso(at(12, 5)), None)]


def test_created_already_due_fires_once(trig: TaskRig) -> None:
    trig.clock.set(at(12, 30))
    trig.schedule("task-p", at(9), "0 * * * *")  # created at 12:30 for 09:00: not "missed"
    trig.sweep(at(12, 30))
    assert _pending(trig) == [(iso(at(9)), None), (iso(at(13)), "0 * * * *")]
    assert trig.history("task-p") == []


def test_crash_between_claim_and_run(trig: TaskRig) -> None:
    trig.schedule("task-c", at(12), "*/5 * * * *")
    trig.sweep(at(12))  # claimed: the next occurrence exists, the 12:00 one is handed over
    assert _pending(trig) == [(iso(at(12)), None), (iso(at(12, 5)), "*/5 * * * *")]
    trig.restart()
    trig.sweep(at(12, 0, 30))
    trig.sweep(at(12, 1))
    assert _pending(trig) == [(iso(at(12)), None), (iso(at(12, 5)), "*/5 * * * *")]
    # a re-run of the step (recurrence back on the handed-over row) inserts nothing twice
    conn = open_inbound(trig.host.sessions.paths(trig.session))
    conn.execute("UPDATE messages_in SET recurrence='*/5 * * * *' WHERE id='task-c'")
    conn.close()
    trig.sweep(at(12, 1, 10))
    ids = [r["id"] for r in trig.rows()]
    assert ids == ["task-c", occurrence_id("task-c", at(12, 5))]
    trig.play_runner()
    trig.sweep(at(12, 2))
    assert [h["outcome"] for h in trig.history("task-c")] == ["ran"]


def test_failed_occurrence_keeps_series(trig: TaskRig) -> None:
    trig.schedule("task-f", at(12), "*/5 * * * *")
    trig.sweep(at(12))
    trig.play_runner("failed")
    trig.sweep(at(12, 1))
    trig.sweep(at(12, 5))
    trig.play_runner()
    trig.sweep(at(12, 6))
    assert [h["outcome"] for h in trig.history("task-f")] == ["failed", "ran"]
    assert _pending(trig) == [(iso(at(12, 10)), "*/5 * * * *")]


def test_every_interval_keeps_phase(trig: TaskRig) -> None:
    trig.schedule("task-e", at(12, 0, 10), "@every 90s")
    t = at(12)
    while t <= at(12, 10):
        trig.sweep(t)
        trig.play_runner()
        t += timedelta(seconds=5)
    times = [r["process_after"] for r in trig.rows()]
    assert times == [iso(at(12, 0, 10) + timedelta(seconds=90 * k)) for k in range(len(times))]
    assert len(times) == 8  # 12:00:10 … 12:09:10, then the head at 12:10:40


def _act(trig: TaskRig, action: str, task_id: str, **extra: object) -> None:
    conn = open_inbound(trig.host.sessions.paths(trig.session))
    try:
        content = {"action": action, "taskId": task_id, **extra}
        trig.run(trig.host.actions.handle(trig.session, content, conn, trig.clock.now()))
        trig.run(trig.host.sessions.settle())  # its note to the agent, if any, is written
    finally:
        conn.close()


@pytest.mark.parametrize("by", ["series", "occurrence"])
def test_pause_resume_update_cancel(trig: TaskRig, by: str) -> None:
    trig.schedule("task-s", at(12), "*/5 * * * *")
    trig.sweep(at(12))
    trig.play_runner()
    trig.sweep(at(12, 1))
    tid = "task-s" if by == "series" else occurrence_id("task-s", at(12, 5))
    _act(trig, "pause_task", tid)
    assert [r["status"] for r in trig.rows("status IN ('pending','paused')")] == ["paused"]
    trig.sweep(at(12, 20))  # paused: nothing is handed over or missed
    assert len(trig.rows()) == 2
    _act(trig, "resume_task", tid)
    assert _pending(trig) == [(iso(at(12, 25)), "*/5 * * * *")]  # rolled to the next slot
    _act(trig, "update_task", tid, prompt="v2", recurrence="0 * * * *", timezone="Europe/Oslo")
    [head] = trig.rows("status='pending'")
    assert head["recurrence"] == "0 * * * *" and '"prompt":"v2"' in head["content"]
    assert '"timezone":"Europe/Oslo"' in head["content"]
    _act(trig, "cancel_task", tid)
    assert trig.rows("status IN ('pending','paused')") == []
    assert trig.rows("recurrence IS NOT NULL") == []
    _act(trig, "pause_task", "nope")
    notes = trig.rows("channel_type='agent'")
    assert notes and 'pause_task: no live task matched id \\"nope\\"' in notes[-1]["content"]


def test_schedule_task_action_stores_zone_and_policy(trig: TaskRig) -> None:
    _act(trig, "schedule_task", "task-z", prompt="p", script=None,
         processAfter=iso(at(14)), recurrence="0 9 * * *", platformId="chan",
         channelType="fake", threadId=None, timezone="America/New_York", catchUp="latest")  # fmt: skip
    [row] = trig.rows()
    assert row["content"] == (
        '{"prompt":"p","script":null,"timezone":"America/New_York","catchUp":"latest"}'
    )
    _act(trig, "schedule_task", "task-bad", prompt="p", processAfter=iso(at(14)),
         recurrence="99 * * * *")  # fmt: skip
    assert len(trig.rows()) == 1
    assert "schedule_task task-bad" in trig.rows("channel_type='agent'")[-1]["content"]
