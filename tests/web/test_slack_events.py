"""Slack's Events API over the host's web server (issue 20): ``POST /slack/events`` with
Slack's request signing. A real host with its web server, the Slack adapter in events mode
against the fake Slack, which POSTs signed requests as Slack does."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_rig import WebRig, wait_for

from carapace.db import groups, messaging
from carapace.testing.fake_slack import SIGNING_SECRET, FakeSlackThread
from carapace.testing.ingest import journal_rows


@pytest.fixture
def slack_rig(tmp_path: Path) -> Iterator[tuple[WebRig, FakeSlackThread]]:
    with FakeSlackThread() as slack:
        slack.fake.add_user("U0ANN", "Ann")
        rig = WebRig(tmp_path, extra_toml=f'[channels.slack]\nbase_url = "{slack.api_url}"\n',
                     extra_secrets=f"SLACK_BOT_TOKEN={slack.fake.bot_token}\n"
                                   f"SLACK_SIGNING_SECRET={SIGNING_SECRET}\n")  # fmt: skip
        try:
            slack.fake.use_events_api(rig.url + "/slack/events")
            yield rig, slack
        finally:
            rig.close()


def _inbound(rig: WebRig) -> list[str]:
    out = []
    for db in (rig.home.data_dir / "v2-sessions").glob("*/*/inbound.db"):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            out += [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM messages_in WHERE kind IN ('chat', 'chat-sdk')"
                )
            ]
        finally:
            conn.close()
    return out


def _wire_dm(rig: WebRig, channel: str) -> None:
    def wire() -> None:
        db = rig.host.db
        [ag] = [g for g in groups.list_agent_groups(db) if g.folder == "main"]
        mg = messaging.create_messaging_group(db, "slack", f"slack:{channel}",
                                              unknown_sender_policy="public")  # fmt: skip
        messaging.create_wiring(db, mg.id, ag.id, engage_mode="pattern", engage_pattern=".")

    rig.on_loop(wire)


def test_a_conversation_over_the_events_api(slack_rig: tuple[WebRig, FakeSlackThread]) -> None:
    rig, slack = slack_rig
    fake = slack.fake
    dm = fake.dm_of("U0ANN")
    _wire_dm(rig, dm)
    ts = slack.call(fake.user_says(dm, "U0ANN", "hello over http"))
    assert fake.http_statuses == [200] and ts in fake.acks  # answered after the commit:
    journaled = [mid for _sid, mid in journal_rows(rig.host.home)]  # durable in the journal,
    stored = set(journaled) | set(_inbound(rig))  # or (read after it) in inbound.db already
    assert [i.split(":")[0] for i in stored] == [ts]
    reply = wait_for(lambda: fake.bot_messages(dm), what="the agent's reply in Slack")
    assert "hello over http" in reply[0].text
    # Slack's retry of a request already taken (its answer was lost): stored once
    fake.unacked[ts] = {"envelope_id": ts, "type": "events_api", "retry_attempt": 0,
                        "payload": {"type": "event_callback", "event_id": f"Ev{ts}",
                                    "team_id": fake.team_id, "api_app_id": "AFAKE",
                                    "event": {"type": "message", "channel": dm, "user": "U0ANN",
                                              "text": "hello over http", "ts": ts,
                                              "channel_type": "im"}}}  # fmt: skip
    slack.call(fake.redeliver())
    assert fake.http_statuses[-1] == 200 and len(_inbound(rig)) == 1


def _signed(fake: Any, body: bytes, **kw: Any) -> dict[str, str]:
    return {"Content-Type": "application/json", **fake.sign(body, **kw)}


def test_url_verification_and_forged_requests(slack_rig: tuple[WebRig, FakeSlackThread]) -> None:
    rig, slack = slack_rig
    fake = slack.fake
    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "x"}).encode()
    status, text = slack.call(fake.post_raw(body, _signed(fake, body)))
    assert status == 200 and "c-123" in text
    status, text = slack.call(fake.post_raw(body, {"Content-Type": "application/json"}))
    assert status == 401 and "c-123" not in text  # not even a challenge without a signature
    dm = fake.dm_of("U0ANN")
    _wire_dm(rig, dm)
    event = json.dumps({"type": "event_callback", "team_id": fake.team_id, "event_id": "Ev1",
                        "event": {"type": "message", "channel": dm, "user": "U0ANN",
                                  "text": "forged", "ts": "1700000000.000001",
                                  "channel_type": "im"}}).encode()  # fmt: skip
    forged = [
        {"Content-Type": "application/json"},  # unsigned
        _signed(fake, event, secret="0" * 32),  # another app's secret
        _signed(fake, event, timestamp=int(time.time()) - 600),  # replayed, 10 minutes late
        {**_signed(fake, event), "X-Slack-Signature": "v0=" + "0" * 64},
    ]
    for headers in forged:
        status, _ = slack.call(fake.post_raw(event, headers))
        assert status == 401, headers
    status, _ = slack.call(fake.post_raw(event + b" ", _signed(fake, event)))  # body changed
    assert status == 401
    assert _inbound(rig) == []
    status, _ = slack.call(fake.post_raw(b"x" * (2 << 20), _signed(fake, b"x")))
    assert status == 413


def test_a_click_over_the_events_api_reaches_the_approvals_entry_point(
    slack_rig: tuple[WebRig, FakeSlackThread],
) -> None:
    """Interactivity (a form with ``payload=``) is verified, then handed to the single
    approvals entry point with the clicker's id; an unsigned one never gets there."""
    import dataclasses
    from urllib.parse import urlencode

    from carapace.channels.base import ButtonClick, ClickAnswer

    rig, slack = slack_rig
    fake = slack.fake
    clicks: list[ButtonClick] = []
    adapter: Any = rig.host.adapters["slack"]
    decide = adapter.callbacks.on_action

    async def recording(click: ButtonClick) -> ClickAnswer:
        clicks.append(click)
        answer: ClickAnswer = await decide(click)
        return answer

    rig.on_loop(lambda: setattr(adapter, "callbacks",
                                dataclasses.replace(adapter.callbacks, on_action=recording)))  # fmt: skip
    dm = fake.dm_of("U0ANN")
    msg_ts = fake.history(dm, fake.bot_user_id, "a card")
    card = fake.all_messages[-1]
    card.bot = True
    card.blocks = [{"type": "actions", "elements": [
        {"type": "button", "action_id": "ncq:q-1:0", "value": "yes",
         "text": {"type": "plain_text", "text": "Yes"}}]}]  # fmt: skip
    form = urlencode(
        {
            "payload": json.dumps(
                {
                    "type": "block_actions",
                    "user": {"id": "U0BAD"},
                    "actions": [{"action_id": "ncq:q-1:0"}],
                }
            )
        }
    ).encode()
    status, _ = slack.call(
        fake.post_raw(form, {"Content-Type": "application/x-www-form-urlencoded"})
    )
    assert status == 401 and clicks == []
    slack.call(fake.click(dm, msg_ts, 0, "U0ANN"))
    assert fake.http_statuses[-1] == 200
    [click] = clicks
    assert (click.channel_type, click.question_id, click.user_id, click.platform_id) == (
        "slack",
        "q-1",
        "U0ANN",
        f"slack:{dm}",
    )
