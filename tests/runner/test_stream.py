"""Streamed replies, the runner's side: the SDK providers stream against the fake servers
(the same turn as a plain call, text handed over as it comes), the mock streams a script's
pieces, and the runner publishes the text in progress as ``outbox/.preview.json`` with the
formatter's markup held back, and ends it when the turn's rows are committed."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from carapace.db.session import SessionPaths
from carapace.errors import ProviderError
from carapace.runner.inbound import Routing
from carapace.runner.preview import PREVIEW_NAME, PreviewWriter, stream_channels, visible
from carapace.runner.providers import ProviderConfig, ToolSpec, create_provider
from carapace.runner.providers.mock import MockProvider
from carapace.testing.fake_llm import FakeError, FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.runner_proc import run_once
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_outbound,
    write_chat,
)

TOOL = ToolSpec("get_time", "the time", {"type": "object", "properties": {}})
LONG = "The quick brown fox jumps over the lazy dog. " * 4


def _provider(flavour: str, srv: FakeLLMServer) -> Any:
    return create_provider(ProviderConfig(name=flavour, base_url=srv.base_url, api_key="k"))


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_sdk_providers_stream_the_same_turn(flavour: str) -> None:
    script = [FakeReply(text=LONG, input_tokens=42, output_tokens=17),
              FakeReply(text="let me look", tool_calls=(FakeToolCall("get_time", {"tz": "UTC"}),))]  # fmt: skip
    with FakeLLMServer(script, flavour=flavour) as srv:  # type: ignore[arg-type]
        provider = _provider(flavour, srv)
        seen: list[str] = []
        msgs = [{"role": "user", "content": "hi"}]
        turn = provider.complete_stream("sys", msgs, [TOOL], seen.append)
        assert srv.requests[0]["stream"] is True
        seen2: list[str] = []
        turn2 = provider.complete_stream("sys", msgs, [TOOL], seen2.append)
    # the text came in pieces, each a prefix of the next, ending with the whole reply
    assert len(seen) > 3 and seen[-1] == LONG
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(seen))
    assert turn.text == LONG and turn.stop_reason == "end_turn" and not turn.tool_calls
    assert (turn.input_tokens, turn.output_tokens) == (42, 17)
    # a tool call is assembled from its deltas, with the text before it
    assert turn2.text == "let me look" and turn2.stop_reason == "tool_use"
    assert [(c.name, c.arguments) for c in turn2.tool_calls] == [("get_time", {"tz": "UTC"})]
    assert seen2[-1] == "let me look"


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_a_streamed_error_is_a_provider_error(flavour: str) -> None:
    with FakeLLMServer([FakeError(400, "bad request")], flavour=flavour) as srv:  # type: ignore[arg-type]
        provider = create_provider(ProviderConfig(name=flavour, base_url=srv.base_url,
                                                  api_key="k", max_retries=0))  # fmt: skip
        with pytest.raises(ProviderError, match="400"):
            provider.complete_stream("", [{"role": "user", "content": "x"}], [], print)


def test_mock_streams_pieces_and_waits_for_its_pause_files(tmp_path: Path) -> None:
    provider = MockProvider(ProviderConfig(agent_dir=str(tmp_path), extra={"script": [
        {"steps": [{"pieces": ["Hello ", "there, ", "friend."], "pause_file": "go"}]}]}))  # fmt: skip
    seen: list[str] = []
    done = threading.Event()
    out: list[Any] = []

    def run() -> None:
        out.append(
            provider.complete_stream("", [{"role": "user", "content": "x"}], [], seen.append)
        )
        done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["Hello "] and not done.is_set()  # held until go.2 exists
    (tmp_path / "go.2").touch()
    (tmp_path / "go.3").touch()
    assert done.wait(30)
    assert seen == ["Hello ", "Hello there, ", "Hello there, friend."]
    assert out[0].text == "Hello there, friend."
    # without streaming the pieces are just the reply
    assert provider.complete("", [{"role": "user", "content": "x"}], []).text == seen[-1]


@pytest.mark.parametrize("bad", [{"pieces": "abc"}, {"pieces": ["a"], "reply": "b"},
                                 {"pieces": ["a"], "pause_file": "../x"}])  # fmt: skip
def test_bad_stream_steps_are_refused(bad: dict[str, Any]) -> None:
    provider = MockProvider(ProviderConfig(extra={"script": [{"steps": [bad]}]}))
    with pytest.raises(ProviderError, match="mock script"):
        provider.complete("", [{"role": "user", "content": "x"}], [])


def test_visible_text_stops_before_any_markup() -> None:
    assert visible("Hello world") == "Hello world"
    assert visible("Hello <internal>secret</internal> world") == "Hello"
    assert visible('Sure. <message to="fam') == "Sure."
    assert visible("<internal>x") == ""
    assert visible("a < b") == "a"  # held back even when it is no markup: the reply shows it


def _read(outbox: Path) -> dict[str, Any]:
    return dict(json.loads((outbox / PREVIEW_NAME).read_text()))


def test_preview_writer_throttles_and_never_loses_the_last_text(tmp_path: Path) -> None:
    clock = [100.0]
    w = PreviewWriter(tmp_path, "msg-r", Routing("telegram", "telegram:1", None),
                      min_interval_s=0.2, monotonic=lambda: clock[0])  # fmt: skip
    w.update("Hel")
    assert _read(tmp_path)["text"] == "Hel"
    w.update("Hello")  # within the interval: held, written by the timer
    assert _read(tmp_path)["text"] == "Hel"
    clock[0] += 1
    deadline = time.monotonic() + 10
    while _read(tmp_path)["text"] != "Hello" and time.monotonic() < deadline:
        time.sleep(0.01)
    data = _read(tmp_path)
    assert data == {"v": 1, "reply_id": "msg-r", "channel_type": "telegram",
                    "platform_id": "telegram:1", "thread_id": None, "text": "Hello",
                    "done": False, "reply": False}  # fmt: skip
    w.update("Hello, <internal>plan</internal>")
    clock[0] += 1
    w.update("Hello, <internal>plan</internal>")
    assert "plan" not in (tmp_path / PREVIEW_NAME).read_text()
    w.finish(reply=True)
    assert _read(tmp_path)["done"] is True and _read(tmp_path)["reply"] is True
    assert not list(tmp_path.glob("*.tmp"))


def test_preview_writer_refuses_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / f"{PREVIEW_NAME}.tmp").symlink_to(target)
    w = PreviewWriter(tmp_path, "msg-r", Routing("telegram", "telegram:1", None))
    w.update("Hello")
    w.update("Hello again")
    assert not target.exists() and not (tmp_path / PREVIEW_NAME).exists()


def test_stream_channels_from_the_environment() -> None:
    assert stream_channels({"CARAPACE_STREAM_CHANNELS": "telegram, slack,,"}) == {
        "telegram", "slack"}  # fmt: skip
    assert stream_channels({}) == frozenset()


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    return make_session(tmp_path, destinations=[channel_dest("family", "telegram", "chat-1")],
                        routing=("telegram", "chat-1", None))  # fmt: skip


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_a_runner_publishes_the_reply_then_writes_it_with_the_preview_id(
    flavour: str, session: SessionPaths, tmp_path: Path
) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": flavour})
    text = LONG + '<message to="family">to the family</message>'
    with FakeLLMServer([FakeReply(text=text, event_delay_s=0.01)], flavour=flavour) as srv:  # type: ignore[arg-type]
        write_chat(session, "tell me", id="m1")
        env = {f"{flavour.upper()}_BASE_URL": srv.base_url, f"{flavour.upper()}_API_KEY": "k",
               "CARAPACE_STREAM_CHANNELS": "telegram"}  # fmt: skip
        result = run_once(session, agent_dir, **env)
    assert result.returncode == 0, result.stderr
    preview = _read(session.outbox)
    rows = read_outbound(session)
    reply = [r for r in rows if r["id"] == preview["reply_id"]]
    assert preview["done"] is True and preview["reply"] is True
    assert preview["text"] == LONG.rstrip() and "family" not in preview["text"]
    assert len(reply) == 1 and reply[0]["content"]["text"] == LONG.strip()
    assert (preview["channel_type"], preview["platform_id"]) == ("telegram", "chat-1")
    assert len(rows) == 2  # the reply and the <message to="family"> block, nothing more


def test_no_preview_for_a_channel_the_host_does_not_stream(
    session: SessionPaths, tmp_path: Path
) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": "anthropic"})
    with FakeLLMServer([FakeReply(text=LONG)]) as srv:
        write_chat(session, "tell me", id="m1")
        result = run_once(session, agent_dir, ANTHROPIC_BASE_URL=srv.base_url,
                          ANTHROPIC_API_KEY="k", CARAPACE_STREAM_CHANNELS="discord")  # fmt: skip
        assert "stream" not in srv.requests[0]  # a plain call
    assert result.returncode == 0, result.stderr
    assert not (session.outbox / PREVIEW_NAME).exists()
    assert read_outbound(session)[-1]["content"]["text"] == LONG.strip()


def test_a_failed_turn_replaces_the_preview_with_the_error(
    session: SessionPaths, tmp_path: Path
) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"})
    (agent_dir / "mock-script.json").write_text(json.dumps([{"steps": [
        {"pieces": ["Working on it, ", "almost"], "tool_calls": [{"name": "nope"}]},
        {"error": "model exploded"}]}]))  # fmt: skip
    write_chat(session, "go", id="m1")
    result = run_once(session, agent_dir, CARAPACE_STREAM_CHANNELS="telegram")
    assert result.returncode == 0, result.stderr
    preview = _read(session.outbox)
    assert preview["done"] is True and preview["reply"] is True
    assert preview["text"] == "Working on it, almost"
    (row,) = [r for r in read_outbound(session) if r["id"] == preview["reply_id"]]
    assert "model exploded" in row["content"]["text"]
