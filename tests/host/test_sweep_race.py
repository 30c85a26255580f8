"""A row written while the sweep looks at its session must not lose the session's place in
the work index. The sweep reads the session's files off the event loop, then sets the
session's next due time from what it read; a row that reached the file in between (a
task the agent scheduled for later, written by the session's pump) asked the index for
its own time, and the sweep's answer, computed without that row, must not drop it."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
from host_rig import Rig

from carapace.host import host_sweep
from carapace.host.sweep import SweepReport
from carapace.jsonutil import dumps
from carapace.timefmt import iso, sqlite_ts


def test_a_task_written_during_a_sweep_keeps_its_due_time(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = rig.one_chat_session("chan")
    rig.run(rig.host.pool.stop_all("test"))  # an idle session: only the index wakes it
    rig.settle()
    for row in rig.inbound(s):  # its message answered: nothing due when the sweep looks
        rig.ack(s, row["id"], "completed")
    looked, go_on = threading.Event(), threading.Event()
    real_scan = host_sweep.scan_session

    def scan_then_wait(*a: Any, **kw: Any) -> Any:
        scan = real_scan(*a, **kw)  # what the file holds now: no task yet
        looked.set()
        go_on.wait(10)
        return scan

    monkeypatch.setattr(host_sweep, "scan_session", scan_then_wait)
    now = rig.clock.now()
    when = now + timedelta(hours=2)

    async def race() -> None:
        sweeping = asyncio.ensure_future(
            rig.host.sweep_session(s.id, now, SweepReport()))  # fmt: skip
        await asyncio.to_thread(looked.wait, 10)
        rig.host.sessions.write_message(s, {
            "id": "task-later", "kind": "task", "timestamp": sqlite_ts(now),
            "process_after": iso(when), "recurrence": None, "series_id": "task-later",
            "platform_id": "chan", "channel_type": "fake",
            "content": dumps({"prompt": "later", "script": None}),
        }, now=now, due=iso(when))  # fmt: skip
        await rig.host.sessions.settle()  # in the file, the index asked
        go_on.set()
        await sweeping

    rig.run(asyncio.wait_for(race(), 30))
    assert [r["id"] for r in rig.inbound(s) if r["id"] == "task-later"] == ["task-later"]
    due = rig.db.execute(
        "SELECT next_due FROM carapace_session_work WHERE session_id=?", (s.id,)
    ).fetchone()
    assert due is not None and due[0] <= iso(when), due
