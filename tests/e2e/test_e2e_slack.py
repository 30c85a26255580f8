"""Slack end to end with real processes: ``carapace channels add slack`` and ``carapace run``
against the fake Slack (in this process, on its own loop), a DM answered by a runner, the
host SIGKILLed, a message sent while it is down, and that message answered after the next
start (Slack redelivers what was never acked)."""

from __future__ import annotations

import os
import sqlite3

from e2e_helpers import E2E, wait_for

from carapace.db import groups, messaging, users
from carapace.testing.fake_slack import FakeSlackThread

ANN = "U0ANN"


def _replies(slack: FakeSlackThread, channel: str, needle: str) -> bool:
    return any(needle in m.text for m in list(slack.fake.bot_messages(channel)))


def test_slack_through_carapace_run_survives_a_host_kill(e2e: E2E) -> None:
    with FakeSlackThread() as slack:
        fake = slack.fake
        fake.add_user(ANN, "Ann")
        dm = fake.dm_of(ANN)
        env = {**os.environ, "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_APP_TOKEN": fake.app_token}
        r = e2e.cli("channels", "add", "slack", "--home", str(e2e.home), "--base-url",
                    slack.api_url, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr + r.stdout
        assert fake.bot_token not in r.stdout + r.stderr
        e2e.write_settings(f'\n[channels.slack]\nbase_url = "{slack.api_url}"\n')
        conn = sqlite3.connect(e2e.central)
        conn.row_factory = sqlite3.Row
        try:
            [main] = groups.list_agent_groups(conn)
            users.upsert_user(conn, f"slack:{ANN}", "slack", "Ann")
            users.grant_role(conn, f"slack:{ANN}", "owner")
            mg = messaging.create_messaging_group(conn, "slack", f"slack:{dm}", name="ann")
            messaging.create_wiring(conn, mg.id, main.id, engage_mode="pattern",
                                    engage_pattern=".")  # fmt: skip
            conn.commit()
        finally:
            conn.close()
        e2e.start_host()
        wait_for(lambda: fake.connections == 1, what="the host's Socket Mode connection")
        slack.call(fake.user_says(dm, ANN, "first words"))
        wait_for(lambda: _replies(slack, dm, "first words"), 30, "the first answer")
        e2e.kill_host()
        wait_for(lambda: not fake._sockets, what="the dead host's socket closed")
        down = slack.call(fake.user_says(dm, ANN, "said while the host was down"))
        assert down in fake.unacked
        e2e.start_host()
        wait_for(lambda: down in fake.acks, 30, "the redelivered message acked")
        wait_for(lambda: _replies(slack, dm, "said while the host was down"), 30,
                 "the answer after the restart")  # fmt: skip
        assert e2e.stop_host() == 0
