"""Pre-task scripts (runner.md §11.3): run before the agent, decide whether to wake it."""

from __future__ import annotations

import os
import select
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sched_helpers import TaskRig

from carapace.db.session import open_inbound
from carapace.jsonutil import dumps, loads_or
from carapace.runner.inbound import InRow
from carapace.runner.task_scripts import apply_pre_task_scripts, run_script
from carapace.timefmt import iso

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, *, id: str, kind: str, content: dict[str, Any],
              now: datetime | None = None) -> int:  # fmt: skip
        self.rows.append({"id": id, "kind": kind, "content": content})
        return 2 * len(self.rows) + 1


def task(mid: str, script: str | None, kind: str = "task") -> InRow:
    return InRow(id=mid, seq=2, kind=kind, timestamp="2026-03-01 12:00:00", status="pending",
                 process_after=None, recurrence=None, series_id=mid, trigger=1,
                 platform_id=None, channel_type=None, thread_id=None,
                 content=dumps({"prompt": "p", "script": script}))  # fmt: skip


def test_json_decision_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "flag").write_text("x")
    r = run_script('test -f flag && echo \'{"wakeAgent": true, "data": {"n": 3}}\'', tmp_path)
    assert r.wake and r.data == {"n": 3} and r.exit_code == 0
    r = run_script("echo noise; echo '{\"wakeAgent\": false}'", tmp_path)
    assert not r.wake and r.exit_code == 0


def test_plain_output_and_failures(tmp_path: Path) -> None:
    r = run_script("echo hello", tmp_path)
    assert r.wake and r.data == "hello"
    r = run_script("echo oops >&2; exit 3", tmp_path)
    assert not r.wake and r.exit_code == 3 and "oops" in r.stderr and r.error == "exit status 3"


def test_timeout_kills_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    r = run_script(f"sleep 30 & echo $! > {pidfile}; wait", tmp_path, timeout=2)
    assert r.timed_out and not r.wake and r.exit_code is None
    pid = int(pidfile.read_text())
    try:  # the group was SIGKILLed: the child exits as soon as the kernel runs it (a
        fd = os.pidfd_open(pid)  # loaded machine may take a moment; a pidfd says when)
    except ProcessLookupError:
        return  # exited and reaped already
    try:
        exited, _, _ = select.select([fd], [], [], 10.0)  # readable once it has exited
    finally:
        os.close(fd)
    assert exited, "the script's background child outlived the timeout's kill"


def test_output_is_capped(tmp_path: Path) -> None:
    r = run_script("head -c 3000000 /dev/zero | tr '\\0' a; echo", tmp_path)
    assert len(r.stdout) == 1024 * 1024


def test_apply_keeps_skips_and_reports(tmp_path: Path) -> None:
    out = Recorder()
    rows = [
        task("t-wake", 'echo \'{"wakeAgent": true, "data": "42 new mails"}\''),
        task("t-skip", "exit 1"),
        task("t-none", None),
        task("c-1", "echo hi", kind="chat"),
    ]
    beats: list[int] = []
    keep, skipped = apply_pre_task_scripts(
        rows, cwd=tmp_path, outbound=out, now=lambda: NOW, heartbeat=lambda: beats.append(1)
    )
    assert [r.id for r in keep] == ["t-wake", "t-none", "c-1"]
    assert [r.id for r in skipped] == ["t-skip"]
    assert keep[0].data["scriptOutput"] == "42 new mails"
    assert [(r["kind"], r["content"]["taskId"], r["content"]["wakeAgent"]) for r in out.rows] == [
        ("system", "t-wake", True), ("system", "t-skip", False)]  # fmt: skip
    assert out.rows[1]["content"]["exitCode"] == 1 and len(beats) == 4


def test_host_records_skipped(trig: TaskRig) -> None:
    trig.schedule("task-s", datetime(2026, 3, 1, 12, tzinfo=UTC), "*/5 * * * *", script="exit 1")
    trig.sweep(NOW)
    trig.ack("task-s", "completed")
    trig.sweep(datetime(2026, 3, 1, 12, 1, tzinfo=UTC))  # the sweep records 'ran' first …
    assert [h["outcome"] for h in trig.history("task-s")] == ["ran"]
    conn = open_inbound(trig.host.sessions.paths(trig.session))
    content = {"action": "task_script_result", "taskId": "task-s", "wakeAgent": False,
               "exitCode": 1, "timedOut": False, "error": "exit status 1", "stdout": "",
               "stderr": "", "durationMs": 5}  # fmt: skip
    trig.run(trig.host.actions.handle(trig.session, content, conn, NOW))
    conn.close()
    [h] = trig.history("task-s")  # … and the script's result wins
    assert h["outcome"] == "skipped" and h["scheduled_for"] == iso(NOW)
    assert loads_or(h["detail"], {})["script"]["exitCode"] == 1
    # the series moves on
    assert [r["process_after"] for r in trig.rows("status='pending'")] == [
        iso(datetime(2026, 3, 1, 12, 5, tzinfo=UTC))]  # fmt: skip
