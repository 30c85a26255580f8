"""The Slack adapter against the fake Slack on loopback: real slack-bolt, real slack_sdk,
real Socket Mode WebSocket."""

from __future__ import annotations

import base64
import json

import pytest

from carapace.channels.base import ButtonClick, OutboundFile, OutboundMessage
from carapace.channels.slack import SlackError, verify
from carapace.channels.slack_adapter import SlackChannel
from carapace.errors import DeliveryError
from carapace.testing.fake_slack import FakeSlack

from .slack_helpers import Recorder, run, slack_world


def _content(ev: object) -> dict[str, object]:
    return json.loads(ev.message.content)  # type: ignore[attr-defined,no-any-return]


def test_dm_channel_thread_and_mention_ids_as_nanoclaw() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, rec):
            assert adapter.status == "connected" and rec.ready == ["slack"]
            dm = slack.dm_of("U1")
            ts = await slack.user_says(dm, "U1", "hello there")
            await slack.wait_acked(ts)
            ev = rec.events[-1]
            assert (ev.channel_type, ev.platform_id, ev.thread_id) == ("slack", f"slack:{dm}", None)
            assert ev.message.id == ts and ev.message.kind == "chat-sdk"
            assert ev.message.is_mention is True and ev.message.is_group is False
            c = _content(ev)
            assert c["text"] == "hello there" and c["senderId"] == "U1" and c["sender"] == "Ann"
            # a plain channel message: not a mention; its own thread
            ts = await slack.user_says("C1", "U2", "just chatting")
            await slack.wait_acked(ts)
            ev = rec.events[-1]
            assert ev.platform_id == "slack:C1" and ev.thread_id == f"slack:C1:{ts}"
            assert ev.message.is_mention is False and ev.message.is_group is True
            # a mention: message + app_mention envelopes, routed once, both acked
            ts = await slack.user_says("C1", "U1", "<@UBOT> what's up")
            await slack.wait_acked(ts)
            await slack.wait_acked(f"{ts}-mention")
            assert [e.message.id for e in rec.events].count(ts) == 1
            assert rec.events[-1].message.is_mention is True
            # the bot answers in the thread; a reply there is a reply to the bot
            await adapter.deliver(
                "slack:C1", f"slack:C1:{ts}", OutboundMessage("chat", {"text": "hi"})
            )
            [bot_msg] = slack.bot_messages("C1")
            assert bot_msg.thread_ts == ts
            reply = await slack.user_says("C1", "U2", "thanks", thread_ts=bot_msg.ts)
            await slack.wait_acked(reply)
            ev = rec.events[-1]
            assert ev.thread_id == f"slack:C1:{bot_msg.ts}" and ev.message.is_mention is True
            # a DM thread has a thread id
            tts = await slack.user_says(dm, "U1", "in a thread", thread_ts=ts)
            await slack.wait_acked(tts)
            assert rec.events[-1].thread_id == f"slack:{dm}:{ts}"

    run(go())


def test_bot_and_system_messages_are_not_routed_but_acked() -> None:
    async def go() -> None:
        async with slack_world() as (slack, _adapter, rec):
            eid = await slack.send_event({"type": "message", "subtype": "channel_join",
                                          "channel": "C1", "user": "U2", "ts": "1.000001"})  # fmt: skip
            eid2 = await slack.send_event({"type": "message", "channel": "C1", "user": "UBOT",
                                           "ts": "1.000002", "text": "me"})  # fmt: skip
            eid3 = await slack.send_event({"type": "reaction_added", "user": "U1"})
            for e in (eid, eid2, eid3):
                await slack.wait_acked(e)
            assert rec.events == []

    run(go())


def test_edit_is_a_new_event_naming_the_original() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, rec):
            dm = slack.dm_of("U1")
            ts = await slack.user_says(dm, "U1", "helo")
            eid = await slack.user_edits(dm, ts, "hello")
            await slack.wait_acked(eid)
            ev = rec.events[-1]
            assert ev.message.id.startswith(f"{ts}:edited:")
            assert _content(ev)["text"] == "hello" and _content(ev)["edited"] is True
            # a reaction to the edit row lands on the original message
            await adapter.react(f"slack:{dm}", None, f"{ev.message.id}:ag-1", "👍")
            assert slack.reactions == [(dm, ts, "thumbsup", "UBOT")]
            await adapter.react(f"slack:{dm}", None, ts, ":thumbsup:")  # already: not an error
            assert len(slack.reactions) == 1

    run(go())


def test_files_downloaded_with_a_cap_and_only_from_slack() -> None:
    async def go() -> None:
        async with slack_world(max_file_bytes=1000) as (slack, _adapter, rec):
            dm = slack.dm_of("U1")
            small = slack.share_file("notes.txt", b"a" * 600, "text/plain")
            big = slack.share_file("big.bin", b"b" * 5000)
            big_lying = slack.share_file("liar.bin", b"c" * 5000)
            big_lying["size"] = 10  # the size Slack states is not trusted
            foreign = dict(small, url_private_download="http://localhost:1/steal",
                           url_private="http://localhost:1/steal")  # fmt: skip
            ts = await slack.user_says(dm, "U1", "files", files=[small, big, big_lying, foreign])
            await slack.wait_acked(ts)
            atts = _content(rec.events[-1])["attachments"]
            assert isinstance(atts, list) and len(atts) == 4
            assert (
                base64.b64decode(atts[0]["data"]) == b"a" * 600 and atts[0]["name"] == "notes.txt"
            )
            assert "data" not in atts[1] and "limit" in atts[1]["note"]
            assert "data" not in atts[2] and "limit" in atts[2]["note"]
            assert "data" not in atts[3] and "file host" in atts[3]["note"]
            assert {c.params["file_id"] for c in slack.calls_of("download")} == {
                small["id"], big_lying["id"]}  # the big one never fetched  # fmt: skip

    run(go())


def test_router_failure_leaves_the_envelope_for_redelivery_after_reconnect() -> None:
    async def go() -> None:
        async with slack_world() as (slack, _adapter, rec):
            dm = slack.dm_of("U1")
            rec.fail = 1
            ts = await slack.user_says(dm, "U1", "do not lose me")
            await slack.wait_for(lambda: rec.fail == 0, what="router called")
            assert ts in slack.unacked and rec.events == []
            await slack.drop()  # the connection dies; the client opens a new one
            await slack.wait_connected(2)
            await slack.wait_acked(ts)
            assert [e.message.id for e in rec.events] == [ts]
            # Slack's refresh: a disconnect message, a new connection, the talk goes on
            await slack.disconnect()
            await slack.wait_connected(3)
            ts2 = await slack.user_says(dm, "U1", "still there?")
            await slack.wait_acked(ts2)
            assert rec.events[-1].message.id == ts2

    run(go())


def test_outbound_mrkdwn_escaped_and_split() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            text = "**Bold** and _it_ <!channel> <@U1> a&b [site](https://e.com/?a=1&b=2)"
            pm = await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"text": text}))
            [m] = slack.bot_messages("C1")
            assert pm == m.ts and m.thread_ts is None
            assert m.text == ("*Bold* and _it_ &lt;!channel&gt; &lt;@U1&gt; a&amp;b "
                              "<https://e.com/?a=1&amp;b=2|site>")  # fmt: skip
            long = "\n\n".join(f"para {i} " + "x" * 900 for i in range(12))
            await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"markdown": long}))
            parts = slack.bot_messages("C1")[1:]
            assert len(parts) == 3 and all(len(p.text) <= 4000 for p in parts)
            assert "".join(p.text for p in parts).replace("\n", "") == long.replace("\n", "")
            with pytest.raises(DeliveryError) as err:
                await adapter.deliver("slack:../../x", None, OutboundMessage("chat", {"text": "x"}))
            assert err.value.permanent

    run(go())


def test_edit_files_and_question_buttons() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, rec):
            dm = slack.dm_of("U1")
            pm = await adapter.deliver(f"slack:{dm}", None, OutboundMessage("chat", {"text": "v1"}))
            assert pm is not None
            await adapter.edit(f"slack:{dm}", None, pm, "v2 **now**")
            msg = slack.message(dm, pm)
            assert msg is not None and msg.text == "v2 *now*" and msg.edited
            files = (OutboundFile("report.csv", b"a,b\n1,2\n"), OutboundFile("x.png", b"\x89PNG"))
            await adapter.deliver(f"slack:{dm}", None,
                                  OutboundMessage("chat", {"text": "see files"}, files))  # fmt: skip
            assert [c.method for c in slack.calls if c.method.startswith(("files.", "upload"))] == [
                "files.getUploadURLExternal", "files.getUploadURLExternal", "upload", "upload",
                "files.completeUploadExternal"]  # fmt: skip
            shown = slack.bot_messages(dm)[-1]
            assert [f["name"] for f in shown.files] == ["report.csv", "x.png"]
            assert [f["data"] for f in slack.files.values() if f["name"] == "report.csv"] == [
                b"a,b\n1,2\n"]  # fmt: skip
            card = {"type": "ask_question", "questionId": "q-1", "title": "Deploy?",
                    "question": "Ship <it> now", "options": [{"label": "Yes", "value": "y"},
                                                             {"label": "No", "value": "n"}],
                    "text": "Deploy?\nReply `AB12 yes`"}  # fmt: skip
            pm = await adapter.deliver(f"slack:{dm}", None, OutboundMessage("chat-sdk", card))
            shown = slack.message(dm, str(pm))
            assert shown is not None
            assert [b["action_id"] for b in shown.buttons()] == ["ncq:q-1:0", "ncq:q-1:1"]
            assert "Ship &lt;it&gt; now" in json.dumps(shown.blocks)
            eid = await slack.click(dm, str(pm), 1, "U2")
            await slack.wait_acked(eid)
            assert rec.actions == [ButtonClick("slack", "q-1", "1", "U2", f"slack:{dm}", None)]
            # after the decision the card is edited: buttons gone
            await adapter.edit(f"slack:{dm}", None, str(pm), "Deploy?\n\nNo")
            assert slack.message(dm, str(pm)).buttons() == []  # type: ignore[union-attr]

    run(go())


def test_rate_limit_retry_after_is_honoured() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            slack.rate_limit("chat.postMessage", retry_after=1)
            await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"text": "wait"}))
            limited, ok = slack.calls_of("chat.postMessage")
            assert limited.status == 429 and ok.status == 200
            assert ok.at - limited.at >= 1.0  # not before Retry-After
            slack.rate_limit("chat.postMessage", retry_after=0, times=4)
            with pytest.raises(DeliveryError) as err:  # still limited: retryable failure
                await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"text": "x"}))
            assert not err.value.permanent and "rate limited" in str(err.value)

    run(go())


def test_unreachable_chat_is_a_permanent_failure() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            slack.archive("C1")
            with pytest.raises(DeliveryError) as err:
                await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"text": "x"}))
            assert err.value.permanent and "is_archived" in str(err.value)
            with pytest.raises(DeliveryError) as err:
                await adapter.deliver("slack:C999", None, OutboundMessage("chat", {"text": "x"}))
            assert err.value.permanent and "channel_not_found" in str(err.value)

    run(go())


def test_open_dm_and_verify() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            assert await adapter.open_dm("slack:U2") == "slack:D2"
            secrets = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token}
            assert await verify(secrets, base_url=slack.api_url) == "@carapace (Fake Team)"
            for bad, why in (({"SLACK_BOT_TOKEN": "xoxb-wrong"}, "bot token: invalid_auth"),
                             ({"SLACK_APP_TOKEN": "xapp-wrong"}, "app token: invalid_auth"),
                             ({"SLACK_BOT_TOKEN": "nope"}, "must be a bot token")):  # fmt: skip
                with pytest.raises(SlackError, match=why):
                    await verify({**secrets, **bad}, base_url=slack.api_url)
            slack.revoke()
            with pytest.raises(SlackError, match="token_revoked"):
                await verify(secrets, base_url=slack.api_url)

    run(go())


def test_revoked_token_start_does_not_raise_and_says_why() -> None:
    async def go() -> None:
        slack = FakeSlack()
        await slack.start()
        slack.revoke()
        adapter = SlackChannel(slack.bot_token, slack.app_token, base_url=slack.api_url)
        try:
            with pytest.raises(SlackError, match=r"rejected a token \(token_revoked\)"):
                await adapter.start(Recorder().callbacks())
            assert adapter.status == "stopped" and slack.connections == 0
        finally:
            await adapter.stop()
            await slack.stop()

    run(go())


def test_agent_written_addresses_ids_and_cards_cannot_escape() -> None:
    """The agent is hostile: its thread ids, message ids and card text are attacker input."""

    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            slack.add_channel("C2", "channel")
            other = await slack.user_says("C2", "U1", "a thread elsewhere")
            for tid in (f"slack:C2:{other}", "slack:C1:../../x", "slack:C1:1.1\nx", "garbage"):
                await adapter.deliver("slack:C1", tid, OutboundMessage("chat", {"text": "hi"}))
            assert [m.thread_ts for m in slack.bot_messages()] == [None] * 4
            assert slack.bot_messages("C2") == []
            n = len(slack.calls)
            for bad in ("1.1?x=1", "../x", "", "C2/1.1"):
                with pytest.raises(DeliveryError) as err:
                    await adapter.edit("slack:C1", None, bad, "x")
                assert err.value.permanent
                with pytest.raises(DeliveryError):
                    await adapter.react("slack:C1", None, bad, "eyes")
            assert len(slack.calls) == n  # refused before Slack was asked
            text = "<!channel> <https://evil.test|click> <@U1> [ok](javascript:alert(1))"
            await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"text": text}))
            shown = slack.bot_messages("C1")[-1].text
            assert "<" not in shown and ">" not in shown  # no ping, no link
            card = {"type": "ask_question", "questionId": "q" * 300, "title": "<!here> hi",
                    "question": "<@U1>?", "options": ["a", "b"],
                    "text": "<!here> hi\nReply `AB12 a`"}  # fmt: skip
            await adapter.deliver("slack:C1", None, OutboundMessage("chat-sdk", card))
            m = slack.bot_messages("C1")[-1]
            assert m.buttons() == [] and "AB12" in m.text and "<!here>" not in m.text
            card["questionId"] = "q-2"
            await adapter.deliver("slack:C1", None, OutboundMessage("chat-sdk", card))
            m = slack.bot_messages("C1")[-1]
            assert len(m.buttons()) == 2 and "<" not in json.dumps(m.blocks)

    run(go())


def test_token_revoked_while_running_is_reported_once() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, rec):
            slack.revoke()
            for _ in range(2):
                with pytest.raises(DeliveryError, match="token_revoked"):
                    await adapter.deliver("slack:C1", None, OutboundMessage("chat", {"text": "x"}))
            assert rec.statuses == [
                ("slack", "failed", "Slack rejected the bot token (token_revoked)")
            ]

    run(go())


def test_a_retry_after_a_failure_part_way_posts_only_the_rest() -> None:
    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            long = "\n\n".join(f"part {i} " + "y" * 3000 for i in range(3))
            msg = OutboundMessage("chat", {"text": long}, (OutboundFile("a.txt", b"a"),), "out-1")
            slack.fail("chat.postMessage", "ratelimited", after=1)
            with pytest.raises(DeliveryError) as err:
                await adapter.deliver("slack:C1", None, msg)
            assert not err.value.permanent and len(slack.bot_messages("C1")) == 1
            slack.fail("files.completeUploadExternal", "internal_error")
            with pytest.raises(DeliveryError):
                await adapter.deliver("slack:C1", None, msg)
            assert len(slack.bot_messages("C1")) == 3
            pm = await adapter.deliver("slack:C1", None, msg)
            shown = slack.bot_messages("C1")
            assert [m.text.split()[1] for m in shown[:3]] == ["0", "1", "2"] and pm == shown[0].ts
            assert len(shown) == 4 and [f["name"] for f in shown[3].files] == ["a.txt"]

    run(go())


def test_slack_down_at_start_is_retried_in_the_background() -> None:
    async def go() -> None:
        slack = FakeSlack()
        await slack.start()
        slack.fail("apps.connections.open", "internal_error")
        adapter = SlackChannel(slack.bot_token, slack.app_token, base_url=slack.api_url,
                               ping_interval=0.5)  # fmt: skip
        rec = Recorder()
        try:
            await adapter.start(rec.callbacks())  # does not wait for Slack to come back
            assert adapter.status == "retrying: internal_error" and rec.ready == []
            await slack.wait_connected(1, 15)
            await slack.wait_for(lambda: adapter.status == "connected", 15, "connected")
            assert rec.ready == ["slack"]
            ts = await slack.user_says(slack.dm_of("U1"), "U1", "back")
            await slack.wait_acked(ts)
            assert [e.message.id for e in rec.events] == [ts]
        finally:
            await adapter.stop()
            await slack.stop()

    run(go())


def test_a_chat_reaches_the_router_in_slack_order() -> None:
    """slack_sdk handles envelopes concurrently: a message whose file is still downloading
    must not be overtaken by the next one."""

    async def go() -> None:
        async with slack_world() as (slack, _adapter, rec):
            dm = slack.dm_of("U1")
            slack.download_delay = 0.3
            f = slack.share_file("slow.txt", b"x")
            first = await slack.user_says(dm, "U1", "with a file", files=[f])
            second = await slack.user_says(dm, "U1", "right after")
            await slack.wait_acked(second)
            await slack.wait_acked(first)
            assert [e.message.id for e in rec.events] == [first, second]

    run(go())


def test_a_resend_after_a_crash_finds_what_slack_shows() -> None:
    """Issue 14: each piece carries the row's key in its metadata; a re-send (``resend``,
    same key) looks the conversation (or thread) up and posts only the pieces Slack does not
    show: nothing when all are there, the rest when the crash came part-way."""

    async def go() -> None:
        async with slack_world() as (slack, adapter, _rec):
            long = "\n\n".join(f"para {i} " + "x" * 900 for i in range(12))  # three pieces

            def row(resend: bool, key: str = "a" * 32) -> OutboundMessage:
                return OutboundMessage("chat", {"markdown": long}, message_out_id="o1",
                                       key=key, resend=resend)  # fmt: skip

            first = await adapter.deliver("slack:C1", None, row(False))
            shown = [m.ts for m in slack.bot_messages("C1")]
            assert len(shown) == 3
            assert await adapter.deliver("slack:C1", None, row(True)) == first
            assert [m.ts for m in slack.bot_messages("C1")] == shown
            # the crash came after the first piece: the other two are posted, once
            slack.all_messages[:] = [m for m in slack.all_messages if m.ts not in shown[1:]]
            assert await adapter.deliver("slack:C1", None, row(True)) == first
            now = slack.bot_messages("C1")
            assert len(now) == 3 and now[0].ts == first
            assert "".join(p.text for p in now).replace("\n", "") == long.replace("\n", "")
            # in a thread, looked up among the thread's replies
            root = slack.history("C1", "U1", "question")
            tid = f"slack:C1:{root}"
            await adapter.deliver("slack:C1", tid, OutboundMessage(
                "chat", {"text": "in thread"}, key="b" * 32))  # fmt: skip
            await adapter.deliver("slack:C1", tid, OutboundMessage(
                "chat", {"text": "in thread"}, key="b" * 32, resend=True))  # fmt: skip
            assert [m.text for m in slack.messages("C1", root) if m.bot] == ["in thread"]
            # a different row with the same text is a new message
            await adapter.deliver("slack:C1", tid, OutboundMessage(
                "chat", {"text": "in thread"}, key="c" * 32, resend=True))  # fmt: skip
            assert [m.text for m in slack.messages("C1", root) if m.bot] == ["in thread"] * 2

    run(go())
