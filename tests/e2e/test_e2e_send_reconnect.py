"""``carapace send`` outlives a host crash between its message and the reply (issue 14):
it reconnects and says the message again with the same id, so the message is stored once
and its reply printed once."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

from e2e_helpers import CARAPACE, E2E, rows, wait_for


def _working(session: Path) -> bool:
    try:  # the runner creates outbound.db as it starts
        return bool(rows(session / "outbound.db",
                         "SELECT 1 FROM processing_ack WHERE status='processing'"))  # fmt: skip
    except sqlite3.Error:
        return False


def test_send_reconnects_when_the_host_dies_before_the_reply(e2e: E2E) -> None:
    # the turn runs a slow command first, so the host can be killed while it works
    script = [{"match": "slow", "tool_calls": [{"name": "bash", "arguments": {
        "command": "sleep 2; echo done"}}], "reply": "slow answer: {tool_result}"}]  # fmt: skip
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(script))
    e2e.ok("groups", "config", "update", "main", "--settings", '{"bash": "allowed"}')
    e2e.start_host()
    send = subprocess.Popen(
        [*CARAPACE, "send", "--home", str(e2e.home), "--timeout", "90", "--json",
         "--reconnect-grace", "120", "slow please"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [session] = wait_for(e2e.sessions, timeout=60, what="session")
        wait_for(lambda: _working(session), timeout=60, what="the turn to start")
        e2e.kill_host(signal.SIGKILL)  # mid-turn: no reply was sent
        e2e.start_host()
        out, err = send.communicate(timeout=150)
    finally:
        if send.poll() is None:
            send.kill()
    assert send.returncode == 0, (out, err)
    replies = [json.loads(line) for line in out.splitlines() if line.strip()]
    answers = [r for r in replies if "slow answer" in str(r.get("text"))]
    assert len(answers) == 1, replies
    [(n,)] = rows(session / "inbound.db",
                  "SELECT count(*) FROM messages_in WHERE content LIKE '%slow please%'")  # fmt: skip
    assert n == 1
    assert e2e.stop_host() == 0


def test_send_gives_up_clearly_when_no_host_comes_back(e2e: E2E) -> None:
    """With a short timeout and the host gone for good (and no embedding before the grace
    ends), send fails with one line, not a traceback."""
    script = [{"match": "slow", "tool_calls": [{"name": "bash", "arguments": {
        "command": "sleep 5"}}], "reply": "late"}]  # fmt: skip
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(script))
    e2e.ok("groups", "config", "update", "main", "--settings", '{"bash": "allowed"}')
    e2e.start_host()
    send = subprocess.Popen(
        [*CARAPACE, "send", "--home", str(e2e.home), "--timeout", "8",
         "--reconnect-grace", "120", "slow please"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [session] = wait_for(e2e.sessions, timeout=60, what="session")
        wait_for(lambda: _working(session), timeout=60, what="the turn to start")
        e2e.kill_host(signal.SIGKILL)
        out, err = send.communicate(timeout=60)
    finally:
        if send.poll() is None:
            send.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert send.returncode == 1 and "Traceback" not in err, (out, err)
    assert lines[-1].startswith("Error: the host went away and did not come back within 8 s"), err
