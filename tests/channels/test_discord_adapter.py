"""The Discord adapter against the fake Discord: real discord.py, real gateway and REST on
loopback. Inbound ids and flags as NanoClaw's, outbound limits, buttons, faults."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from carapace.channels.base import ClickAnswer, OutboundFile, OutboundMessage
from carapace.errors import DeliveryError

from .discord_rig import TIMEOUT, content, discord_rig


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


def test_dm_channel_thread_and_mention_ids() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, _adapter, rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            await fake.user_says(dm, ann, "hello in private")
            ev = await rec.next_event(1)
            assert (ev.channel_type, ev.platform_id, ev.thread_id) == (
                "discord",
                f"discord:@me:{dm.id}",
                None,
            )
            assert ev.message.is_mention is True and ev.message.is_group is False
            doc = content(ev)
            assert doc["text"] == "hello in private"
            assert (doc["senderId"], doc["sender"]) == (ann.id, "ann")
            assert ev.message.kind == "chat-sdk"

            general = fake.text_channel("home", "general")
            gid = general.guild_id
            await fake.user_says(general, ann, "just chatting")
            ev = await rec.next_event(2)
            assert (ev.platform_id, ev.thread_id) == (f"discord:{gid}:{general.id}", None)
            assert ev.message.is_mention is False and ev.message.is_group is True

            await fake.user_says(general, ann, "are you there?", mention=True)
            ev = await rec.next_event(3)
            assert ev.message.is_mention is True
            assert content(ev)["text"].endswith("are you there?")

            thread = fake.thread(general, "plans")
            await fake.user_says(thread, ann, "in the thread")
            ev = await rec.next_event(4)
            assert ev.platform_id == f"discord:{gid}:{general.id}"
            assert ev.thread_id == f"discord:{gid}:{general.id}:{thread.id}"

            bot_msg = fake.message_payload(general, fake.bot, "I said this")
            general.messages.append(bot_msg)
            await fake.user_says(general, ann, "replying to the bot", reply_to=bot_msg)
            ev = await rec.next_event(5)
            assert ev.message.is_mention is True
            assert content(ev)["replyTo"]["text"] == "I said this"

    run(scenario())


def test_edit_arrives_as_a_new_message_marked_edited() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, _adapter, rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            msg = await fake.user_says(dm, ann, "meet at 5")
            await rec.next_event(1)
            await fake.user_edits(msg, "meet at 6")
            ev = await rec.next_event(2)
            doc = content(ev)
            assert doc["text"] == "meet at 6" and doc["metadata"]["edited"] is True
            assert doc["editOf"] == msg["id"] and ev.message.id != msg["id"]

    run(scenario())


def test_files_downloaded_up_to_the_cap() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, _adapter, rec):  # the rig's cap: 1024 bytes
            ann = fake.person("ann")
            dm = fake.dm(ann)
            await fake.user_says(dm, ann, "small", file=("notes.txt", b"hello file"))
            await fake.user_says(dm, ann, "big", file=("big.bin", b"x" * 2048))
            small, big = content(await rec.next_event(1)), content(await rec.next_event(2))
            assert base64.b64decode(small["attachments"][0]["data"]) == b"hello file"
            assert small["attachments"][0]["name"] == "notes.txt"
            assert "data" not in big["attachments"][0]
            assert "over 1024 bytes" in big["attachments"][0]["note"]

    run(scenario())


def test_outbound_split_markdown_files_edit_react_typing() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, adapter, _rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            pid = f"discord:@me:{dm.id}"
            long = "\n\n".join(f"paragraph {i} " + "word " * 60 for i in range(20))
            first = await adapter.deliver(pid, None, OutboundMessage("chat", {"text": long}))
            sent = fake.bot_messages(dm)
            assert len(sent) > 1 and all(len(m["content"]) <= 2000 for m in sent)
            assert first == sent[0]["id"]
            assert " ".join(m["content"] for m in sent).split() == long.split()

            await adapter.deliver(
                pid, None, OutboundMessage("chat", {"text": "__bold__ and ||not a spoiler||"})
            )
            assert fake.bot_messages(dm)[-1]["content"] == "**bold** and \\|\\|not a spoiler\\|\\|"

            files = tuple(OutboundFile(f"f{i}.txt", b"data %d" % i) for i in range(12))
            await adapter.deliver(pid, None, OutboundMessage("chat", {"text": "files"}, files))
            with_files = [m for m in fake.bot_messages(dm) if m["attachments"]]
            assert [len(m["attachments"]) for m in with_files] == [10, 2]

            await adapter.edit(pid, None, first or "", "edited words")
            assert fake.bot_messages(dm)[0]["content"] == "edited words"
            await adapter.react(pid, None, f"{first}:ag-1", "thumbsup")
            assert fake.reactions[-1] == (dm.id, first, "👍")
            await adapter.set_typing(pid, None)
            assert fake.typing == [dm.id]

    run(scenario())


def test_card_buttons_and_clicks_carry_the_clicker() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, adapter, rec):
            ann, bob = fake.person("ann"), fake.person("bob")
            general = fake.text_channel("home", "general")
            pid = f"discord:{general.guild_id}:{general.id}"
            card = {
                "type": "ask_question",
                "questionId": "nsa-1-abc",
                "title": "👤 New sender",
                "question": "bob wants to talk. Allow?",
                "options": [
                    {"label": "Allow", "value": "approve"},
                    {"label": "Deny", "value": "reject"},
                ],
            }
            mid = await adapter.deliver(pid, None, OutboundMessage("chat-sdk", card))
            msg = fake.bot_messages(general)[-1]
            assert msg["id"] == mid and "New sender" in msg["content"]
            buttons = msg["components"][0]["components"]
            assert [b["custom_id"] for b in buttons] == ["ncq:nsa-1-abc:0", "ncq:nsa-1-abc:1"]

            rec.answer = ClickAnswer("refused", "You may not answer this.", False)
            await fake.click(msg, 0, bob)
            click = await rec.wait(lambda: rec.clicks and rec.clicks[-1])
            assert (click.question_id, click.value, click.user_id) == ("nsa-1-abc", "0", bob.id)
            assert click.platform_id == pid and click.channel_type == "discord"
            await fake.wait_for(lambda: len(fake.interaction_responses) == 1)
            assert fake.interaction_responses[0]["type"] == 6  # acknowledged, card unchanged

            await fake.click(msg, 1, ann)
            await rec.wait(lambda: len(rec.clicks) == 2)
            assert rec.clicks[1].user_id == ann.id and rec.clicks[1].value == "1"
            await adapter.edit(pid, None, mid or "", "👤 New sender\n\n❌ Denied")
            assert msg["components"] == [] and msg["content"].endswith("❌ Denied")

    run(scenario())


def test_429_is_waited_out_per_route_and_limits_are_kept() -> None:
    async def scenario() -> None:
        async with discord_rig(limit_per_route=3, window=0.1) as (fake, adapter, _rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            pid = f"discord:@me:{dm.id}"
            fake.inject_429("POST", "/channels/{id}/messages", times=2, retry_after=0.05)
            await adapter.deliver(pid, None, OutboundMessage("chat", {"text": "after 429"}))
            assert fake.bot_messages(dm)[-1]["content"] == "after 429"
            assert fake.rate_limited.count(("POST", "/channels/{id}/messages")) == 2
            for i in range(8):  # more than the bucket holds: discord.py waits for it
                await adapter.deliver(pid, None, OutboundMessage("chat", {"text": f"n{i}"}))
            assert [m["content"] for m in fake.bot_messages(dm)[-8:]] == [f"n{i}" for i in range(8)]
            assert fake.violations == []

    run(scenario())


def test_refusals_are_permanent_failures() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, adapter, _rec):
            general = fake.text_channel("home", "general")
            pid = f"discord:{general.guild_id}:{general.id}"
            fake.make_unreachable(general)
            with pytest.raises(DeliveryError) as err:
                await adapter.deliver(pid, None, OutboundMessage("chat", {"text": "hi"}))
            assert err.value.permanent and "403" in str(err.value)
            with pytest.raises(DeliveryError) as err:
                await adapter.deliver("telegram:42", None, OutboundMessage("chat", {"text": "x"}))
            assert err.value.permanent
            with pytest.raises(DeliveryError) as err:
                await adapter.react(f"discord:@me:{fake.dm(fake.person('x')).id}", None, "1", "👍")
            assert err.value.permanent  # unknown message

    run(scenario())


def test_events_sent_while_disconnected_arrive_after_resume() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, _adapter, rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            await fake.user_says(dm, ann, "before")
            await rec.next_event(1)
            await fake.gateway.disconnect(4000)
            for i in range(3):
                await fake.user_says(dm, ann, f"while away {i}")
            texts = [content(e)["text"] for e in [await rec.next_event(n) for n in (2, 3, 4)]]
            assert texts == ["while away 0", "while away 1", "while away 2"]
            assert fake.gateway.resumes == 1 and fake.gateway.identifies == 1

    run(scenario())


def test_bad_token_is_refused_at_start_and_revocation_reported() -> None:
    async def scenario() -> None:
        from carapace.channels.discord import DiscordError, verify
        from carapace.channels.discord_adapter import DiscordChannel
        from carapace.testing.fake_discord import FakeDiscord

        fake = await FakeDiscord().start()
        try:
            with pytest.raises(DiscordError, match="401"):
                await verify({"DISCORD_BOT_TOKEN": "wrong"}, base_url=fake.base_url)
            who = await verify({"DISCORD_BOT_TOKEN": fake.token}, base_url=fake.base_url)
            assert who == f"@{fake.bot.username} ({fake.bot.id})"
            from .discord_rig import Recorded

            rec = Recorded()
            bad = DiscordChannel("wrong", base_url=fake.base_url)
            with pytest.raises(DiscordError, match="wrong or was revoked"):
                await bad.start(rec.callbacks())
            good = DiscordChannel(
                fake.token, base_url=fake.base_url, guild_ready_timeout=0.05, identify_pause=0
            )
            await good.start(rec.callbacks())
            await asyncio.wait_for(good.ready.wait(), TIMEOUT)
            fake.token = "rotated"  # the old token is revoked; the gateway drops the bot
            fake.gateway.invalidate()
            await fake.gateway.disconnect(4000)
            st = await rec.wait(lambda: rec.statuses and rec.statuses[-1])
            assert st[:2] == ("discord", "failed") and "revoked" in (st[2] or "")
            await good.stop()
        finally:
            await fake.stop()

    run(scenario())


def test_said_while_the_host_was_down_is_caught_up(tmp_path: Any) -> None:
    """Discord gives a new session no backlog: the adapter reads the history after the last
    message it routed, in order; the cursor file is private and a damaged one is ignored."""

    async def scenario() -> None:
        from carapace.channels.discord_adapter import DiscordChannel
        from carapace.testing.fake_discord import FakeDiscord

        from .discord_rig import Recorded

        fake = await FakeDiscord().start()
        state = tmp_path / "discord-cursor.json"

        async def up(rec: Recorded) -> DiscordChannel:
            a = DiscordChannel(fake.token, base_url=fake.base_url, guild_ready_timeout=0.05,
                               state_path=state)  # fmt: skip
            await a.start(rec.callbacks())
            await asyncio.wait_for(a.ready.wait(), TIMEOUT)
            return a

        try:
            ann = fake.person("ann")
            dm, general = fake.dm(ann), fake.text_channel("home", "general")
            first = Recorded()
            a = await up(first)
            await fake.user_says(dm, ann, "one")
            await fake.user_says(general, ann, "in general")
            await first.next_event(2)
            await a.stop()  # the host is down; people go on talking
            assert oct(state.stat().st_mode & 0o777) == "0o600"
            for text in ("two", "three"):
                await fake.user_says(dm, ann, text)
            await fake.user_says(general, ann, "more in general", mention=True)
            second = Recorded()
            b = await up(second)
            got = [(e.platform_id, content(e)["text"]) for e in second.events]
            assert got == [
                (f"discord:@me:{dm.id}", "two"), (f"discord:@me:{dm.id}", "three"),
                (f"discord:{general.guild_id}:{general.id}", "@carapace-bot more in general"),
            ]  # fmt: skip
            assert second.events[-1].message.is_mention is True
            await b.stop()
            state.write_text("{not json")
            third = Recorded()
            c = await up(third)  # a damaged cursor: no catch-up, no error
            await fake.user_says(dm, ann, "four")
            assert content(await third.next_event(1))["text"] == "four"
            await c.stop()
        finally:
            await fake.stop()

    run(scenario())


def test_discord_unreachable_at_start_is_tried_again() -> None:
    """No network when the host starts (a home machine booting): the adapter does not fail,
    it logs in once Discord answers."""

    async def scenario() -> None:
        import socket

        from carapace.channels.discord_adapter import DiscordChannel
        from carapace.testing.fake_discord import FakeDiscord

        from .discord_rig import Recorded

        with socket.socket() as s:  # a loopback port nobody listens on (yet)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        rec = Recorded()
        a = DiscordChannel("fake-discord-token", base_url=f"http://127.0.0.1:{port}",
                           guild_ready_timeout=0.05, retry_base=0.02)  # fmt: skip
        await a.start(rec.callbacks())  # does not raise: Discord is merely unreachable
        fake = await FakeDiscord().start(port)
        try:
            await asyncio.wait_for(a.ready.wait(), TIMEOUT)
            ann = fake.person("ann")
            await fake.user_says(fake.dm(ann), ann, "you made it")
            assert content(await rec.next_event(1))["text"] == "you made it"
            assert rec.statuses == []
        finally:
            await a.stop()
            await fake.stop()

    run(scenario())


def test_missing_message_content_intent_is_reported() -> None:
    async def scenario() -> None:
        from carapace.channels.discord_adapter import DiscordChannel
        from carapace.testing.fake_discord import FakeDiscord

        from .discord_rig import Recorded

        fake = await FakeDiscord(content_intent=False).start()
        rec = Recorded()
        a = DiscordChannel(fake.token, base_url=fake.base_url, guild_ready_timeout=0.05)
        try:
            await a.start(rec.callbacks())  # the token is fine: the gateway refuses the intent
            st = await rec.wait(lambda: rec.statuses and rec.statuses[-1])
            assert st[:2] == ("discord", "failed") and "Message Content intent" in (st[2] or "")
        finally:
            await a.stop()
            await fake.stop()

    run(scenario())


def test_a_retry_after_failing_part_way_posts_only_the_rest() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, adapter, _rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            pid = f"discord:@me:{dm.id}"
            long = "\n\n".join(f"paragraph {i} " + "word " * 60 for i in range(20))
            msg = OutboundMessage("chat", {"text": long}, message_out_id="msg-long")
            dm.posts_before_failing = 1  # the first piece is posted, the second refused
            with pytest.raises(DeliveryError):
                await adapter.deliver(pid, None, msg)
            assert len(fake.bot_messages(dm)) == 1
            dm.unreachable = False  # the host retries later
            first = await adapter.deliver(pid, None, msg)
            sent = fake.bot_messages(dm)
            assert first == sent[0]["id"]
            assert " ".join(m["content"] for m in sent).split() == long.split()  # each once

    run(scenario())


def test_a_resend_after_a_crash_shows_nothing_twice() -> None:
    """Issue 14: the host sends a row again, same key, when it crashed before recording
    the send. Each piece carries a nonce from the key with enforce_nonce, so Discord answers
    with the messages already made: a long reply, one with files and a card appear once."""
    from carapace.channels.base import OutboundFile

    async def scenario() -> None:
        async with discord_rig() as (fake, adapter, _rec):
            dm = fake.dm(fake.person("ann"))
            pid = f"discord:@me:{dm.id}"
            long = "\n\n".join(f"paragraph {i} " + "word " * 60 for i in range(8))
            files = (OutboundFile("a.txt", b"a"),)
            rows = [
                OutboundMessage("chat", {"text": long}, message_out_id="r1", key="a" * 32),
                OutboundMessage("chat", {"text": "with a file"}, files, message_out_id="r2",
                                key="b" * 32),
                OutboundMessage("chat", {"type": "ask_question", "questionId": "q1",
                                         "title": "Pick", "question": "Which?",
                                         "options": ["x", "y"]},
                                message_out_id="r3", key="c" * 32),
            ]  # fmt: skip
            firsts = [await adapter.deliver(pid, None, m) for m in rows]
            shown = [m["id"] for m in fake.bot_messages(dm)]
            assert len(shown) > 3 and fake.nonce_hits == 0
            again = [
                await adapter.deliver(pid, None, OutboundMessage(
                    m.kind, m.content, m.files, m.message_out_id, key=m.key, resend=True))
                for m in rows
            ]  # fmt: skip
            assert [m["id"] for m in fake.bot_messages(dm)] == shown
            assert again == firsts and fake.nonce_hits == len(shown)
            # a different row with the same text is a new message
            await adapter.deliver(pid, None, OutboundMessage("chat", {"text": "with a file"},
                                                             key="d" * 32))  # fmt: skip
            assert len(fake.bot_messages(dm)) == len(shown) + 1

    run(scenario())
