"""Streamed replies end to end: a real ``carapace run`` with its runner in bubblewrap, the
real python-telegram-bot against the fake Bot API: a long reply shows as one message that
is edited as the model writes, and ends as that one message holding the whole reply; with
``stream_replies = false`` the same reply comes as one message, never edited."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_helpers import E2E, wait_for

from carapace.sandbox import bwrap_unusable_reason
from carapace.testing.fake_llm import FakeLLMServer, FakeReply
from carapace.testing.fake_telegram import FakeTelegram

REASON = bwrap_unusable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")

ANN = 1001
PIECES = ["Once upon a time, ", "there was a fox ", "who wrote replies <internal>plan</internal>",
          "one word at a time."]  # fmt: skip
FINAL = "Once upon a time, there was a fox who wrote replies one word at a time."


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


def _texts(tg: FakeTelegram) -> list[str]:
    return [m.text for m in tg.bot_messages(ANN)]


def _setup(e2e: E2E, tg: FakeTelegram, extra: str = "") -> None:
    toml = e2e.home / "carapace.toml"
    toml.write_text(toml.read_text().replace('runner_backend = "subprocess"', ""))
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": tg.token}
    r = e2e.cli("channels", "add", "telegram", "--home", str(e2e.home), "--base-url",
                tg.root_url, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    e2e.write_settings('runner_backend = "bwrap"\n\n[channels.telegram]\n'
                       f'base_url = "{tg.root_url}"\npoll_timeout_s = 1\n{extra}')  # fmt: skip
    e2e.owner_dm("telegram", f"telegram:{ANN}", "Ann")
    rules: list[dict[str, Any]] = [{"match": "story", "steps": [
        {"pieces": PIECES, "pause_file": "go"}]}]  # fmt: skip
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(rules))


def _go(e2e: E2E, n: int) -> None:
    (e2e.home / "groups" / "main" / f"go.{n}").touch()


def test_a_long_reply_is_shown_as_it_is_written(e2e: E2E, tg: FakeTelegram) -> None:
    _setup(e2e, tg)
    e2e.start_host()
    tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann", "ann"), "tell me a story")

    def texts() -> list[str]:
        return _texts(tg)

    wait_for(lambda: texts() == ["Once upon a time,"], what="the preview message")
    _go(e2e, 2)
    wait_for(lambda: texts() == ["Once upon a time, there was a fox"], what="the first edit")
    _go(e2e, 3)  # the <internal> part never shows, not even in part
    wait_for(lambda: texts() == ["Once upon a time, there was a fox who wrote replies"],
             what="the second edit")  # fmt: skip
    _go(e2e, 4)
    wait_for(lambda: texts() == [FINAL], what="the final reply in the preview message")
    [msg] = tg.bot_messages(ANN)
    assert msg.edits >= 3
    assert len([p for p in tg.called("sendMessage") if str(p.get("chat_id")) == str(ANN)]) == 1
    assert all("plan" not in str(p.get("text")) for p in tg.called("editMessageText"))
    assert "bwrap" in e2e.host_log()
    e2e.stop_host()
    assert texts() == [FINAL]  # nothing more came after the stop


def test_stream_replies_false_sends_one_message(e2e: E2E, tg: FakeTelegram) -> None:
    _setup(e2e, tg, "stream_replies = false\n")
    e2e.start_host()
    tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann", "ann"), "tell me a story")
    wait_for(lambda: [m.text for m in tg.bot_messages(ANN)] == [FINAL], what="the reply")
    assert tg.called("editMessageText") == []
    e2e.stop_host()


KEY = "sk-ant-e2e-stream-key-000"
STORY = "Once upon a time, there was a fox who streamed its reply through the host's proxy."


def test_an_anthropic_reply_streams_through_the_proxy(e2e: E2E, tg: FakeTelegram) -> None:
    """The real anthropic SDK in the sandboxed runner, streaming through the host's egress
    proxy from the fake Anthropic server, which holds the stream half-way until the test
    has seen the preview."""
    _setup(e2e, tg)
    with open(e2e.home / "secrets.env", "a") as f:
        f.write(f"ANTHROPIC_API_KEY={KEY}\n")
    hold = threading.Event()
    # events: message_start, content_block_start, then 8 characters a delta
    reply = FakeReply(text=STORY, hold=hold, hold_after=5)
    try:
        with FakeLLMServer([reply], require_key=KEY) as srv:
            e2e.ok("groups", "config", "update", "--id", "main", "--provider", "anthropic",
                   "--settings", json.dumps({"base_url": srv.base_url}))  # fmt: skip
            e2e.start_host()
            tg.user_message(tg.private_chat(ANN, "Ann"), tg.user(ANN, "Ann", "ann"), "a story")
            wait_for(lambda: _texts(tg) == ["Once upon a time, there"], timeout=120,
                     what="the preview of the half-written reply")  # fmt: skip
            hold.set()
            wait_for(lambda: _texts(tg) == [STORY], timeout=60, what="the whole reply")
            assert srv.requests[0]["stream"] is True
    finally:
        hold.set()
    assert len([p for p in tg.called("sendMessage") if str(p.get("chat_id")) == str(ANN)]) == 1
    e2e.stop_host()
