"""Telegram adapter specifics beyond the contract: faults (429, network, blocked, revoked
token), formatting fallback, mentions, edits, file caps, cards, ``verify`` — the real
python-telegram-bot against the fake Bot API server on loopback."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.channels.base import OutboundMessage
from carapace.channels.fake import FakeChannel, make_event
from carapace.channels.registry import read_states
from carapace.channels.telegram import TelegramChannel, TelegramConfig, TokenRejected, verify
from carapace.config import Home
from carapace.errors import ConfigError, DeliveryError
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.jsonutil import loads_or
from carapace.migrate.doctor import diagnose
from carapace.testing.fake_telegram import FakeTelegram

from .contract import Recorder, until

ANN = 1001


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


def adapter(tg: FakeTelegram, **kw: Any) -> TelegramChannel:
    kw.setdefault("poll_timeout_s", 1)
    kw.setdefault("backoff_s", 0.01)
    return TelegramChannel(TelegramConfig(tg.token, tg.root_url, **kw))


def run(tg: FakeTelegram, case: Callable[[TelegramChannel, Recorder], Awaitable[None]],
        **kw: Any) -> Recorder:  # fmt: skip
    rec = Recorder()

    async def main() -> None:
        a = adapter(tg, **kw)
        await a.start(rec.callbacks())
        try:
            await case(a, rec)
        finally:
            await a.stop()

    asyncio.run(main())
    return rec


def text(msg: str) -> OutboundMessage:
    return OutboundMessage("chat", {"text": msg}, (), "msg-x")


def content(rec: Recorder, n: int) -> dict[str, Any]:
    doc = loads_or(rec.events[n].message.content, {})
    assert isinstance(doc, dict)
    return doc


def test_429_retry_after_is_honoured(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 429, retry_after=1)

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        await a.deliver(f"telegram:{ANN}", None, text("after the wait"))

    run(tg, case)
    assert len(tg.called("sendMessage")) == 2
    assert [m.text for m in tg.bot_messages(ANN)] == ["after the wait"]


def test_a_long_rate_limit_is_a_retryable_failure(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 429, retry_after=3600)

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        with pytest.raises(DeliveryError) as err:
            await a.deliver(f"telegram:{ANN}", None, text("later"))
        assert not err.value.permanent and "rate limited" in str(err.value)

    run(tg, case)
    assert tg.bot_messages(ANN) == []


def test_network_errors_are_retried_with_backoff(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 502, "Bad Gateway", times=2)

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        await a.deliver(f"telegram:{ANN}", None, text("got through"))

    run(tg, case)
    assert len(tg.called("sendMessage")) == 3 and len(tg.bot_messages(ANN)) == 1


def test_a_waiting_chat_does_not_block_another(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 429, retry_after=30, chat_id=ANN)

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        slow = asyncio.get_running_loop().create_task(
            a.deliver(f"telegram:{ANN}", None, text("slow")))  # fmt: skip
        await until(lambda: _true(tg.called("sendMessage")), "the first send")
        await a.deliver("telegram:2002", None, text("fast"))
        assert not slow.done()  # still waiting out its 30 s
        slow.cancel()

    run(tg, case)
    assert [m.text for m in tg.bot_messages(2002)] == ["fast"]


async def _true(value: Any) -> bool:
    return bool(value)


def test_a_blocked_bot_is_a_permanent_failure(tg: FakeTelegram) -> None:
    tg.block(ANN)

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        with pytest.raises(DeliveryError) as err:
            await a.deliver(f"telegram:{ANN}", None, text("hello?"))
        assert err.value.permanent and "blocked" in str(err.value)
        with pytest.raises(DeliveryError) as err:
            await a.deliver("telegram:not-a-chat", None, text("x"))
        assert err.value.permanent
        tg.fail("sendMessage", 400, "Bad Request: chat not found")  # a deleted chat
        with pytest.raises(DeliveryError) as err:
            await a.deliver("telegram:-4242", None, text("anyone?"))
        assert err.value.permanent and "chat not found" in str(err.value).lower()

    run(tg, case)


def test_a_formatting_refusal_falls_back_to_plain_text(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 400, "Bad Request: can't parse entities: unexpected end tag")

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        await a.deliver(f"telegram:{ANN}", None, text("**bold** <b> & more"))

    run(tg, case)
    first, second = tg.called("sendMessage")
    assert first["parse_mode"] == "HTML" and "parse_mode" not in second
    assert [m.text for m in tg.bot_messages(ANN)] == ["**bold** <b> & more"]


def test_formatting_is_rendered_and_everything_else_escaped(tg: FakeTelegram) -> None:
    async def case(a: TelegramChannel, rec: Recorder) -> None:
        await a.deliver(f"telegram:{ANN}", None,
                        text("**Plan**: run `a<b && c` then see [docs](https://x.org/?a=1&b=2)"))  # fmt: skip

    run(tg, case)
    [m] = tg.bot_messages(ANN)
    assert m.text == "Plan: run a<b && c then see docs"
    assert "<b>Plan</b>" in m.source and "<code>a&lt;b &amp;&amp; c</code>" in m.source
    assert 'href="https://x.org/?a=1&amp;b=2"' in m.source


def test_a_revoked_token_stops_the_adapter_once(tg: FakeTelegram) -> None:
    async def case(a: TelegramChannel, rec: Recorder) -> None:
        tg.revoke()
        await rec.wait_for(lambda: bool(rec.statuses), "the failed status")
        with pytest.raises(DeliveryError, match="rejected"):
            await a.deliver(f"telegram:{ANN}", None, text("x"))
        await a.set_typing(f"telegram:{ANN}", None)  # quietly nothing

    rec = run(tg, case)
    assert len(rec.statuses) == 1
    ct, state, detail = rec.statuses[0]
    assert (ct, state) == ("telegram", "failed") and "rejected" in str(detail)


def test_a_revoked_token_leaves_the_host_serving_other_channels(
    tg: FakeTelegram, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home")
    fake = FakeChannel()
    host = Host(home, channels=[adapter(tg), fake], backend=FakeBackend(),
                options=HostOptions(sockets=False, watch=False))  # fmt: skip

    async def go() -> None:
        await host.start(background=False)
        try:
            tg.revoke()
            await until(lambda: _true(read_states(home).get("telegram", {}).get("state")
                                      == "failed"), "the failed state")  # fmt: skip
            await host.route(make_event("still here"))  # the host serves the others
        finally:
            await host.stop()

    try:
        asyncio.run(go())
    finally:
        host.close()
    [finding] = [f for f in diagnose(home).findings if f.code == "channel-failed"]
    assert finding.level == "error" and "rejected" in finding.message


def test_a_rejected_token_at_start_is_one_clear_error(tg: FakeTelegram, tmp_path: Path) -> None:
    bad = TelegramChannel(TelegramConfig("999:wrong", tg.root_url))
    with pytest.raises(TokenRejected, match="rejected"):
        asyncio.run(bad.start(Recorder().callbacks()))


def test_mentions_replies_and_commands(tg: FakeTelegram) -> None:
    group = tg.group_chat(-555, "Team")
    ann = tg.user(ANN, "Ann", "ann")

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        pm = await a.deliver("telegram:-555", None, text("I am the bot"))
        assert pm is not None
        bot_mid = int(pm.split(":")[1])
        tg.user_message(group, ann, "a reply to the bot", reply_to=bot_mid)
        other = tg.user_message(group, ann, "someone else")
        tg.user_message(group, ann, "a reply to ann", reply_to=other["message_id"])
        cmd = f"/status@{tg.username}"
        tg.user_message(group, ann, cmd, entities=[{"type": "bot_command", "offset": 0,
                                                    "length": len(cmd)}])  # fmt: skip
        tg.user_message(group, ann, "/status@other_bot",
                        entities=[{"type": "bot_command", "offset": 0, "length": 17}])  # fmt: skip
        await rec.event(5)
        got = [(content(rec, i)["text"], rec.events[i].message.is_mention) for i in range(5)]
        assert got == [("a reply to the bot", True), ("someone else", False),
                       ("a reply to ann", False), (cmd, True), ("/status@other_bot", False)]  # fmt: skip
        assert content(rec, 0)["replyTo"] == {"text": "I am the bot", "sender": "Carapace"}
        assert all(e.message.is_group for e in rec.events)

    run(tg, case)


def test_an_edited_message_reaches_the_session_as_a_new_event(tg: FakeTelegram) -> None:
    async def case(a: TelegramChannel, rec: Recorder) -> None:
        m = tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann"), "teh typo")
        first = await rec.event(1)
        tg.edit_user_message(ANN, m["message_id"], "the typo")
        second = await rec.event(2)
        assert first.message.id == f"{ANN}:{m['message_id']}"
        assert second.message.id.startswith(f"{ANN}:{m['message_id']}:edit:")
        doc = content(rec, 1)
        assert doc["text"] == "the typo" and doc["edited"] is True
        assert doc["originalId"] == first.message.id

    run(tg, case)


def test_files_in_are_capped_and_every_kind_arrives(tg: FakeTelegram) -> None:
    dm, ann = tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann")

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        tg.user_message(dm, ann, "big one", document=("big.bin", b"x" * 5000))
        tg.user_message(dm, ann, None, photo=b"jpegdata")
        tg.user_message(dm, ann, None, voice=b"oggdata")
        tg.user_message(dm, ann, "a song", audio=("song.mp3", b"mp3data"))
        await rec.event(4)
        big = content(rec, 0)
        assert "data" not in big["attachments"][0] and "skipped" in big["attachments"][0]
        assert "not downloaded" in big["text"]
        kinds = [(content(rec, i)["attachments"][0]["type"],
                  base64.b64decode(content(rec, i)["attachments"][0]["data"])) for i in (1, 2, 3)]  # fmt: skip
        assert kinds == [("image", b"jpegdata"), ("voice", b"oggdata"), ("audio", b"mp3data")]

    run(tg, case, max_file_bytes=1000)
    assert len(tg.called("getFile")) == 3  # the big one was never fetched


def test_a_file_telegram_will_not_give_is_named_and_the_message_kept(tg: FakeTelegram) -> None:
    tg.fail("getFile", 400, "Bad Request: file is too big")

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann"), "look",
                        document=("huge.iso", b"x"))  # fmt: skip
        await rec.event(1)
        doc = content(rec, 0)
        assert doc["text"].startswith("look") and "file is too big" in doc["text"].lower()
        assert "data" not in doc["attachments"][0]

    run(tg, case)


def test_a_file_download_cut_by_the_network_reads_the_update_again(tg: FakeTelegram) -> None:
    tg.fail("getFile", 502, "Bad Gateway", times=1)

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann"), "look",
                        document=("a.txt", b"abc"))  # fmt: skip
        await rec.event(1)
        assert base64.b64decode(content(rec, 0)["attachments"][0]["data"]) == b"abc"

    run(tg, case)
    assert len(tg.called("getFile")) == 2


def test_cards_edits_and_unknown_buttons(tg: FakeTelegram) -> None:
    long_id = "q" * 80  # callback data would pass Telegram's 64 bytes: a text card instead

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        card = {"type": "ask_question", "questionId": long_id, "title": "Pick",
                "question": "which?", "options": ["a", "b"],
                "text": "Pick\nwhich?\nReply `zz12 a` or `zz12 b`"}  # fmt: skip
        pm = await a.deliver(f"telegram:{ANN}", None, OutboundMessage("chat-sdk", card))
        assert pm is not None
        await a.edit(f"telegram:{ANN}", None, pm, "Pick\n\nchosen")
        await a.edit(f"telegram:{ANN}", None, pm, "Pick\n\nchosen")  # not modified: fine
        ok = await a.deliver(f"telegram:{ANN}", None, OutboundMessage(
            "chat-sdk", {"type": "ask_question", "questionId": "q1", "title": "T",
                         "question": "Q", "options": ["yes"]}))  # fmt: skip
        assert ok is not None
        m = tg.messages[(ANN, int(ok.split(":")[1]))]
        m.buttons.append([{"text": "alien", "callback_data": "other:thing"}])
        tg.press_button(ANN, m.message_id, 1, tg.user(ANN, "Ann"))
        await until(lambda: _true(tg.answers), "the answer")
        assert rec.clicks == []

    run(tg, case)
    first = tg.bot_messages(ANN)[0]
    assert first.buttons == [] and first.text == "Pick\n\nchosen" and first.edits == 1
    assert "not carapace" in str(tg.answers[0].get("text"))


def test_reactions_take_shortcodes(tg: FakeTelegram) -> None:
    async def case(a: TelegramChannel, rec: Recorder) -> None:
        pm = await a.deliver(f"telegram:{ANN}", None, text("nice"))
        assert pm is not None
        await a.react(f"telegram:{ANN}", None, pm, "thumbs_up")

    run(tg, case)
    assert tg.bot_messages(ANN)[0].reactions == ["👍"]


def test_the_fake_enforces_telegrams_limits(tg: FakeTelegram) -> None:
    from telegram import Bot
    from telegram.error import BadRequest

    async def go() -> None:
        async with Bot(tg.token, base_url=tg.base_url, base_file_url=tg.base_file_url) as bot:
            with pytest.raises(BadRequest, match="too long"):
                await bot.send_message(ANN, "x" * 4097)
            with pytest.raises(BadRequest, match="parse entities"):
                await bot.send_message(ANN, "<ann>", parse_mode="HTML")
            await bot.send_message(ANN, "x" * 4096)

    asyncio.run(go())
    assert len(tg.bot_messages(ANN)) == 1


def test_verify(tg: FakeTelegram) -> None:
    assert asyncio.run(verify({"TELEGRAM_BOT_TOKEN": tg.token}, base_url=tg.root_url)) == \
        f"@{tg.username} (id {tg.bot_id})"  # fmt: skip
    with pytest.raises(TokenRejected, match="rejected"):
        asyncio.run(verify({"TELEGRAM_BOT_TOKEN": "1:nope"}, base_url=tg.root_url))
    with pytest.raises(TokenRejected, match="looks like"):
        asyncio.run(verify({"TELEGRAM_BOT_TOKEN": "nocolon"}, base_url=tg.root_url))
    with pytest.raises(ConfigError, match="cannot reach"):
        asyncio.run(verify({"TELEGRAM_BOT_TOKEN": tg.token}, base_url="http://127.0.0.1:9"))


def test_the_token_never_reaches_a_log(tg: FakeTelegram, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    tg.fail("getUpdates", 502, "Bad Gateway")
    tg.fail("sendMessage", 502, "Bad Gateway")

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann"), "hi",
                        document=("a.txt", b"x"))  # fmt: skip
        await rec.event(1)
        await a.deliver(f"telegram:{ANN}", None, text("hello"))

    run(tg, case)
    assert caplog.records and tg.token.split(":")[1] not in caplog.text


def test_a_link_card_has_url_buttons_only(tg: FakeTelegram) -> None:
    async def case(a: TelegramChannel, rec: Recorder) -> None:
        card = {"type": "card", "card": {
            "title": "Build <7>", "description": "passed & green", "children": ["a", {"text": "b"}],
            "actions": [{"label": "Open", "url": "https://ci.example/7"},
                        {"label": "Run", "url": "javascript:alert(1)"}]}}  # fmt: skip
        assert await a.deliver(f"telegram:{ANN}", None, OutboundMessage("chat-sdk", card))
        assert await a.deliver(f"telegram:{ANN}", None, OutboundMessage(
            "chat-sdk", {"type": "card", "card": {}})) is None  # fmt: skip

    run(tg, case)
    [m] = tg.bot_messages(ANN)
    assert m.text == "Build <7>\n\npassed & green\n\na\n\nb"
    assert m.buttons == [[{"text": "Open", "url": "https://ci.example/7"}]]


def test_settings_are_checked(tmp_path: Path) -> None:
    from carapace.channels.telegram import from_home
    from carapace.config import Settings

    home = Home(tmp_path)
    secrets = {"TELEGRAM_BOT_TOKEN": "1:x"}
    assert from_home(home, {}, Settings()) is None  # not configured: not started
    ok = from_home(home, secrets, Settings(extra={"channels": {"telegram": {"max_file_mb": 5}}}))
    assert ok is not None and ok.config.max_file_bytes == 5 * 1024 * 1024
    for bad in ({"max_file_mb": 100}, {"max_file_mb": "5"}, {"poll_timeout_s": -1},
                {"base_url": 7}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"\[channels.telegram\]"):
            from_home(home, secrets, Settings(extra={"channels": {"telegram": bad}}))


def test_a_mention_after_an_emoji_is_found_by_utf16_offsets(tg: FakeTelegram) -> None:
    handle = f"@{tg.username}"

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        tg.user_message(tg.group_chat(-555, "Team"), tg.user(ANN, "Ann"), f"😀😀 {handle} hi",
                        entities=[{"type": "mention", "offset": 5, "length": len(handle)}])  # fmt: skip
        assert (await rec.event(1)).message.is_mention is True

    run(tg, case)


def test_a_long_reply_is_split_off_the_event_loop(
    tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Splitting a reply of megabytes takes milliseconds to seconds: a long one is split in
    a worker thread (a short one on the loop, no thread hop)."""
    import threading

    import carapace.channels.telegram as telegram

    threads: list[tuple[int, int]] = []
    real = telegram.split_text

    def noting(t: str, *a: Any) -> list[str]:
        threads.append((len(t), threading.get_ident()))
        return real(t, *a)

    monkeypatch.setattr(telegram, "split_text", noting)
    long = "A sentence of the report. " * 2000  # 52,000 characters: 13 messages
    loop_thread: list[int] = []

    async def case(a: TelegramChannel, rec: Recorder) -> None:
        loop_thread.append(threading.get_ident())
        await a.deliver(f"telegram:{ANN}", None, text("short"))
        await a.deliver(f"telegram:{ANN}", None, text(long))

    run(tg, case)
    sent = [m.text for m in tg.bot_messages(ANN)]
    assert sent[0] == "short" and " ".join(sent[1:]).split() == long.split()
    assert [(n, t == loop_thread[0]) for n, t in threads] == [(5, True), (len(long), False)]
