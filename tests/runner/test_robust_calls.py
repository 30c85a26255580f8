"""Robust model calls: a max_tokens stop is continued (or reported as cut), never delivered as
if complete; the fake servers enforce the APIs' message-structure rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carapace.db.session import SessionPaths
from carapace.testing import llm_anthropic, llm_openai
from carapace.testing.fake_llm import FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.runner_proc import run_once
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_outbound,
    write_chat,
)


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    return make_session(tmp_path, destinations=[channel_dest("family", "telegram", "chat-1")],
                        routing=("telegram", "chat-1", None))  # fmt: skip


def _run(flavour: str, session: SessionPaths, tmp_path: Path, script: list[FakeReply],
         settings: dict[str, object] | None = None) -> tuple[str, list[dict[str, object]]]:  # fmt: skip
    cut = "length" if flavour == "openai" else "max_tokens"
    script = [FakeReply(text=r.text, tool_calls=r.tool_calls, stop_reason=cut)
              if r.stop_reason == "max_tokens" else r for r in script]  # fmt: skip
    agent_dir = make_agent_dir(tmp_path, config={"provider": flavour,
                                                 "settings": settings or {}})  # fmt: skip
    with FakeLLMServer(script, flavour=flavour) as srv:  # type: ignore[arg-type]
        env = {f"{flavour.upper()}_BASE_URL": srv.base_url,
               f"{flavour.upper()}_API_KEY": "test-key"}  # fmt: skip
        write_chat(session, "write a long poem", id="m1")
        result = run_once(session, agent_dir, **env)
        requests = list(srv.requests)
        assert srv.structure_errors == []
    assert result.returncode == 0, result.stderr
    return str(read_outbound(session)[-1]["content"]["text"]), requests


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_max_tokens_stop_is_continued(flavour: str, session: SessionPaths, tmp_path: Path) -> None:
    text, requests = _run(flavour, session, tmp_path, [
        FakeReply(text="Roses are red, ", stop_reason="max_tokens"),
        FakeReply(text="violets are blue."),
    ])  # fmt: skip
    assert text == "Roses are red, violets are blue."
    assert "output token limit" in json.dumps(requests[1]["messages"][-1])


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_max_tokens_every_time_is_reported_as_cut(
    flavour: str, session: SessionPaths, tmp_path: Path
) -> None:
    cut = [FakeReply(text=f"part {i}. ", stop_reason="max_tokens") for i in range(4)]
    cut[1] = FakeReply(text="part 1. ", tool_calls=(FakeToolCall("send_message", {"text": "x"}),),
                       stop_reason="max_tokens")  # fmt: skip
    text, requests = _run(flavour, session, tmp_path, cut)
    assert text.startswith("part 0. part 1. part 2. part 3.")
    assert text.endswith(
        "(This reply is incomplete: the model hit its output token limit 4 times.)"
    )
    assert len(requests) == 4
    # the cut-off tool call was not run
    assert [r["content"]["text"] for r in read_outbound(session)] == [text]


def test_per_group_model_timeout(session: SessionPaths, tmp_path: Path) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": "anthropic",
                                                 "settings": {"model_timeout_s": 0.5}})  # fmt: skip
    late = [FakeReply(text="late", delay_s=3)] * 3  # the SDK retries a timeout twice
    with FakeLLMServer(late) as srv:
        write_chat(session, "hi", id="m1")
        result = run_once(session, agent_dir, ANTHROPIC_BASE_URL=srv.base_url,
                          ANTHROPIC_API_KEY="test-key")  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = read_outbound(session)[-1]["content"]["text"]
    assert "timed out after 0.5s" in text


def test_anthropic_structure_rules() -> None:
    ok = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                                     {"type": "text", "text": "more"}]},
    ]}  # fmt: skip
    assert llm_anthropic.check_messages(ok) is None
    unanswered = {"messages": [*ok["messages"][:2], {"role": "user", "content": "no result"}]}
    assert "no tool_result" in (llm_anthropic.check_messages(unanswered) or "")
    stray = {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "zz", "content": "r"}]}]}  # fmt: skip
    assert "answer no tool_use" in (llm_anthropic.check_messages(stray) or "")
    twice = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    assert "alternate" in (llm_anthropic.check_messages(twice) or "")
    first = {"messages": [{"role": "assistant", "content": "a"}]}
    assert "alternate" in (llm_anthropic.check_messages(first) or "")
    late = {"messages": [ok["messages"][0], ok["messages"][1], {"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}]}  # fmt: skip
    assert "come first" in (llm_anthropic.check_messages(late) or "")


def test_openai_structure_rules() -> None:
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "x", "arguments": "{}"}}]}  # fmt: skip
    ok = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, call,
                       {"role": "tool", "tool_call_id": "c1", "content": "r"}]}  # fmt: skip
    assert llm_openai.check_messages(ok) is None
    skipped = {
        "messages": [{"role": "user", "content": "u"}, call, {"role": "user", "content": "u"}]
    }
    assert "must be followed by tool messages" in (llm_openai.check_messages(skipped) or "")
    stray = {"messages": [{"role": "user", "content": "u"},
                          {"role": "tool", "tool_call_id": "zz", "content": "r"}]}  # fmt: skip
    assert "does not answer" in (llm_openai.check_messages(stray) or "")


def test_anthropic_prompt_caching_and_cache_tokens() -> None:
    from carapace.runner.providers import ProviderConfig, ToolSpec, create_provider

    tools = [ToolSpec("a", "A", {"type": "object", "properties": {}}),
             ToolSpec("b", "B", {"type": "object", "properties": {}})]  # fmt: skip
    reply = FakeReply(text="hi", cache_read_tokens=900, cache_write_tokens=40)
    with FakeLLMServer([reply]) as srv:
        provider = create_provider(ProviderConfig(name="anthropic", base_url=srv.anthropic_base_url,
                                                  api_key="test-key", max_retries=0))  # fmt: skip
        turn = provider.complete("the system", [{"role": "user", "content": "x"}], tools)
        body = srv.requests[0]
    assert (turn.cache_read_tokens, turn.cache_write_tokens) == (900, 40)
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in body["tools"][0]
    assert body["tools"][1]["cache_control"] == {"type": "ephemeral"}
