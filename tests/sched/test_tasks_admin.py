"""``carapace admin tasks …`` with no host running (applied directly to the home)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from e2e_helpers import E2E, rows


def test_tasks_admin_direct(tmp_path: Path) -> None:
    e2e = E2E(tmp_path)
    assert e2e.cli("init").returncode == 0
    script = tmp_path / "check.sh"
    script.write_text("echo '{\"wakeAgent\": true}'\n")
    t = e2e.ok("tasks", "create", "--group", "main", "--prompt", "digest",
               "--cron", "0 9 * * *", "--tz", "Europe/Oslo", "--at", "2030-03-30T09:00",
               "--catch-up", "all", "--script", str(script))  # fmt: skip
    assert t["next_run_utc"] == "2030-03-30T08:00:00.000Z"  # 09:00 CET
    assert t["next_run"] == "2030-03-30T09:00:00+01:00 Europe/Oslo"
    assert t["catch_up"] == "all" and t["script"].startswith("echo") and t["history"] == []
    tid = t["id"]
    [(sid, due)] = rows(e2e.central, "SELECT session_id, next_due FROM carapace_session_work")
    assert due == "2030-03-30T08:00:00.000Z" and sid == t["session_id"]
    # routed to the group's origin chat (the CLI chat of main)
    [d] = e2e.sessions()
    [(ch, pid)] = rows(d / "inbound.db", "SELECT channel_type, platform_id FROM messages_in")
    assert (ch, pid) == ("cli", "local")
    u = e2e.ok("tasks", "update", tid, "--cron", "30 8 * * 1-5", "--at", "2030-04-01T08:30")
    assert u["recurrence"] == "30 8 * * 1-5" and u["next_run"].startswith(
        "2030-04-01T08:30:00+02:00"
    )
    assert e2e.ok("tasks", "pause", tid)["status"] == "paused"
    assert e2e.ok("tasks", "resume", tid)["status"] == "pending"
    assert [x["id"] for x in e2e.ok("tasks", "list")] == [tid]
    code, data, _ = e2e.admin("tasks", "create", "--group", "main", "--prompt", "x",
                              "--cron", "99 * * * *")  # fmt: skip
    assert code == 1 and data["error"]["code"] == "invalid-args"
    code, data, _ = e2e.admin("tasks", "create", "--group", "main", "--prompt", "x",
                              "--tz", "Mars/Base")  # fmt: skip
    assert code == 1
    assert e2e.ok("tasks", "cancel", tid)["status"] == "completed"
    assert e2e.ok("tasks", "list") == []
