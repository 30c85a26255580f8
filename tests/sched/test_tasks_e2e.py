"""Issue 5 end to end: ``carapace run`` on a temp home, a recurring task created with
``carapace admin tasks create`` whose first occurrence is already due: it fires once, the
reply reaches the CLI chat, the next occurrence exists in the same series at the right time
(the catch-up policies after a stop are driven with the Host API in test_series.py)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from e2e_helpers import E2E, rows, wait_for

from carapace.sched.cron import next_after
from carapace.timefmt import iso

pytest_plugins: list[str] = []


def _e2e(tmp_path: Path) -> E2E:
    env = E2E(tmp_path)
    r = env.cli("init")
    assert r.returncode == 0, r.stderr
    env.write_settings('runner_backend = "subprocess"\n')
    return env


# Yearly: the first occurrence is the explicit --at (five seconds ago); the next one can
# never come due while the test runs (a per-minute cron flaked when creation crossed a minute).
CRON = "0 12 15 6 *"


def test_recurring_task_fires_once_and_rolls_over(tmp_path: Path) -> None:
    e2e = _e2e(tmp_path)
    try:
        e2e.start_host()
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        local = at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
        task = e2e.ok("tasks", "create", "--group", "main", "--prompt", "report",
                      "--cron", CRON, "--tz", "America/New_York",
                      "--at", local.replace(tzinfo=None).isoformat(), "--catch-up", "latest")  # fmt: skip
        tid = task["id"]
        assert task["timezone"] == "America/New_York" and task["catch_up"] == "latest"
        [d] = e2e.sessions("*")
        wait_for(lambda: rows(d / "outbound.db", "SELECT status FROM processing_ack "
                              "WHERE message_id=?", (tid,)) == [("completed",)],
                 timeout=30, what="first occurrence ran")  # fmt: skip
        replies = rows(d / "outbound.db", "SELECT id FROM messages_out WHERE in_reply_to=?", (tid,))
        assert len(replies) == 1  # fired once
        nxt = next_after(CRON, "America/New_York", at)
        occ = rows(d / "inbound.db", "SELECT id, series_id, process_after, recurrence, status "
                   "FROM messages_in WHERE kind='task' ORDER BY seq")  # fmt: skip
        assert occ[0][0] == tid and occ[0][3] is None
        by_id = {o[0]: o for o in occ}
        assert len(by_id) == len(occ) and {o[1] for o in occ} == {tid}
        # the next occurrence: the next 15 June, noon, in the task's zone after the first one
        assert by_id[f"{tid}@{iso(nxt)}"][1:3] == (tid, iso(nxt))
        [head] = [o for o in occ if o[3] is not None]
        assert head[3] == CRON and head[4] == "pending" and head[2].endswith(":00.000Z")
        got = e2e.ok("tasks", "get", tid)
        assert got["next_run_utc"] in {o[2] for o in occ if o[4] == "pending"} | {head[2]}
        assert "America/New_York" in got["next_run"]
        # the reply waits for a CLI reader: the next client of the chat receives it
        r = e2e.send("hello")
        assert r.returncode == 0 and r.stdout.startswith("[earlier]"), r.stdout
        earlier, now_reply = r.stdout.split("Mock reply", 2)[1:]
        assert '"report"' in earlier and '"hello"' in now_reply
        wait_for(lambda: [h["outcome"] for h in e2e.ok("tasks", "get", tid)["history"]]
                 == ["ran"], what="history 'ran'")  # fmt: skip
        # operator verbs on the live host, by occurrence id and by series id
        assert e2e.ok("tasks", "pause", f"{tid}@{iso(nxt)}")["status"] == "paused"
        assert e2e.ok("tasks", "resume", tid)["status"] == "pending"
        assert e2e.ok("tasks", "update", tid, "--prompt", "report v2")["prompt"] == "report v2"
        listed = e2e.ok("tasks", "list", "--group", "main")
        assert [t["id"] for t in listed] == [tid]
        assert e2e.ok("tasks", "cancel", tid)["status"] == "completed"
        assert e2e.ok("tasks", "list") == []
        code, data, _ = e2e.admin("tasks", "get", "task-nope")
        assert code == 1 and data["error"]["code"] == "not-found"
        assert e2e.stop_host() == 0
    finally:
        if e2e.host is not None and e2e.host.poll() is None:
            e2e.host.kill()
            e2e.host.wait(5)
