"""A conversation on the fake Slack as people would have it, through a real host and real
runner processes: a DM, a file, a channel mention answered in its thread (per-thread
sessions), a stranger held for approval whose card's button is clicked first by the wrong
person and then by the owner, an unwired channel registered by the owner's click, and a
network cut mid-conversation; a reply Slack refuses is reported to the agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from carapace.bootstrap import init_home
from carapace.channels.fake import FakeChannel, make_event
from carapace.channels.slack_adapter import SlackChannel
from carapace.config import Home
from carapace.db import groups, messaging, users
from carapace.db.sessions import list_sessions
from carapace.host.host import Host, HostOptions
from carapace.testing.fake_slack import FakeSlack

from .slack_helpers import run

ANN, BOB = "U0ANN", "U0BOB"
TEAM = "C0TEAM"
WAIT = 60.0


@contextlib.asynccontextmanager
async def world(tmp_path: Path, *extra: Any) -> AsyncIterator[tuple[FakeSlack, Host, str]]:
    slack = FakeSlack()
    await slack.start()
    slack.add_user(ANN, "Ann")
    slack.add_user(BOB, "Bob")
    slack.add_channel(TEAM, "channel")
    dm = slack.dm_of(ANN)
    home = Home(tmp_path / "home")
    init_home(home)
    conn = sqlite3.connect(home.central_db)
    conn.row_factory = sqlite3.Row
    try:
        [main] = groups.list_agent_groups(conn)
        users.upsert_user(conn, f"slack:{ANN}", "slack", "Ann")
        users.grant_role(conn, f"slack:{ANN}", "owner")
        mg = messaging.create_messaging_group(conn, "slack", f"slack:{dm}", name="ann",
                                              unknown_sender_policy="strict")  # fmt: skip
        messaging.create_wiring(conn, mg.id, main.id, engage_mode="pattern", engage_pattern=".")
        team = messaging.create_messaging_group(conn, "slack", f"slack:{TEAM}", name="team",
                                                is_group=True,
                                                unknown_sender_policy="request_approval")  # fmt: skip
        messaging.create_wiring(conn, team.id, main.id, engage_mode="mention-sticky",
                                session_mode="per-thread")  # fmt: skip
        conn.commit()
    finally:
        conn.close()
    adapter = SlackChannel(slack.bot_token, slack.app_token, base_url=slack.api_url,
                           ping_interval=0.5)  # fmt: skip
    host = Host(home, channels=[adapter, *extra],
                options=HostOptions(sockets=False, cleanup_orphans=False))  # fmt: skip
    await host.start()
    try:
        yield slack, host, dm
    finally:
        await host.stop()
        host.close()
        await slack.stop()


def _texts(slack: FakeSlack, channel: str, thread_ts: str | None = None) -> list[str]:
    return [m.text for m in slack.bot_messages(channel)
            if thread_ts is None or m.thread_ts == thread_ts]  # fmt: skip


def test_a_conversation_on_slack(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as (slack, host, dm):
            # a DM: answered in the DM
            await slack.user_says(dm, ANN, "hello from slack")
            await slack.wait_for(lambda: any("hello from slack" in t for t in _texts(slack, dm)),
                                 WAIT, "the DM answered")  # fmt: skip
            # a file: it lands in the session's inbox
            f = slack.share_file("notes.txt", b"remember the milk\n", "text/plain")
            ts = await slack.user_says(dm, ANN, "keep this file", files=[f])
            await slack.wait_acked(ts)
            [dm_session] = [s for s in list_sessions(host.db) if s.thread_id is None]
            inbox = host.sessions.paths(dm_session).inbox
            saved = list(inbox.glob("*/notes.txt"))
            assert [p.read_bytes() for p in saved] == [b"remember the milk\n"]
            # a plain channel message is not for the bot; a mention is, answered in its thread
            plain = await slack.user_says(TEAM, ANN, "lunch anyone?")
            await slack.wait_acked(plain)
            mention = await slack.user_says(TEAM, ANN, f"<@{slack.bot_user_id}> status please")
            await slack.wait_for(lambda: any("status please" in t
                                             for t in _texts(slack, TEAM, mention)),
                                 WAIT, "the mention answered in its thread")  # fmt: skip
            assert not any("lunch" in t for t in _texts(slack, TEAM))
            threads = {s.thread_id for s in list_sessions(host.db) if s.thread_id}
            assert threads == {f"slack:{TEAM}:{mention}"}  # a per-thread session
            # a stranger in the thread is held; the card goes to the owner's DM
            held = await slack.user_says(TEAM, BOB, "me too", thread_ts=mention)
            await slack.wait_acked(held)
            card = await slack.wait_for(
                lambda: next((m for m in slack.bot_messages(dm) if m.buttons()), None),
                WAIT, "the approval card")  # fmt: skip
            labels = [b["text"]["text"] for b in card.buttons()]
            assert labels[0].startswith("Allow") or labels[0].startswith("Approve"), labels
            before = len(slack.bot_messages(dm))
            # the wrong person clicks: refused, told so, the card still stands
            eid = await slack.click(dm, card.ts, 0, BOB)
            await slack.wait_acked(eid)
            await slack.wait_for(lambda: len(slack.bot_messages(dm)) > before, WAIT,
                                 "the refusal")  # fmt: skip
            assert card.buttons() and not any("me too" in t for t in _texts(slack, TEAM))
            # the owner clicks: the card is closed and Bob's message is answered in the thread
            eid = await slack.click(dm, card.ts, 0, ANN)
            await slack.wait_acked(eid)
            await slack.wait_for(lambda: any("me too" in t for t in _texts(slack, TEAM, mention)),
                                 WAIT, "Bob answered after the approval")  # fmt: skip
            await slack.wait_for(lambda: not card.buttons(), WAIT, "the card edited")
            # a channel nobody wired: a mention asks the owner to register it
            slack.add_channel("C0NEW", "channel")
            asked = await slack.user_says("C0NEW", ANN, f"<@{slack.bot_user_id}> are you here?")
            reg = await slack.wait_for(
                lambda: next((m for m in slack.bot_messages(dm)
                              if m.buttons() and m.ts != card.ts), None),
                WAIT, "the registration card")  # fmt: skip
            assert reg.buttons()[0]["text"]["text"] == "Connect to Main"
            eid = await slack.click(dm, reg.ts, 0, ANN)
            await slack.wait_acked(eid)
            await slack.wait_for(lambda: any("are you here?" in t
                                             for t in _texts(slack, "C0NEW", asked)),
                                 WAIT, "the new channel answered in the thread")  # fmt: skip
            # the network is cut; what is said meanwhile is delivered after the reconnect
            await slack.drop()
            cut = await slack.user_says(dm, ANN, "said during the cut")
            await slack.wait_connected(2, WAIT)
            await slack.wait_acked(cut, WAIT)
            await slack.wait_for(lambda: any("said during the cut" in t
                                             for t in _texts(slack, dm)),
                                 WAIT, "the message from the cut answered")  # fmt: skip
            ins = _rows(host, dm_session, "SELECT id FROM messages_in")
            assert sum(1 for (i,) in ins if i.startswith(cut)) == 1  # routed once
            # Slack refuses the reply: the agent is told
            slack.fail("chat.postMessage", "not_in_channel")
            await slack.user_says(dm, ANN, "this answer will bounce")
            await slack.wait_for(
                lambda: any("could not be delivered" in c and "not_in_channel" in c for (c,) in
                            _rows(host, dm_session, "SELECT content FROM messages_in")),
                WAIT, "the agent told of the failure")  # fmt: skip

    run(go())


def _rows(host: Host, session: Any, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{host.sessions.paths(session).inbound}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_revoked_slack_token_leaves_the_other_channels_serving(tmp_path: Path) -> None:
    async def go() -> None:
        other = FakeChannel("fake")
        slack2 = FakeSlack()
        await slack2.start()
        slack2.revoke()
        home = Home(tmp_path / "home")
        init_home(home)
        bad = SlackChannel(slack2.bot_token, slack2.app_token, base_url=slack2.api_url)
        host2 = Host(home, channels=[bad, other],
                     options=HostOptions(sockets=False, cleanup_orphans=False))  # fmt: skip
        try:
            await host2.start()
            assert "slack" not in host2.adapters and "fake" in host2.adapters
            state = json.loads((home.data_dir / "channels.json").read_text())
            assert state["slack"]["state"] == "failed"
            assert "token_revoked" in state["slack"]["detail"]
            await other.callbacks.on_inbound(make_event("still here", platform_id="local"))  # type: ignore[union-attr]
        finally:
            await host2.stop()
            host2.close()
            await slack2.stop()

    asyncio.run(asyncio.wait_for(go(), 120))
