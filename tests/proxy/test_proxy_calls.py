"""Real SDK calls through the host's egress proxy to the fake provider servers on loopback:
keys added by the host, bodies streamed, usage recorded exactly, budgets, retries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from carapace.proxy import budgets
from carapace.testing.fake_llm import FakeError, FakeLLMServer, FakeReply, FakeToolCall

from .proxy_rig import ANT_KEY, GROUP, OAI_KEY, ProxyRig

TOOL = {"name": "echo", "description": "Echo.", "input_schema": {"type": "object"}}
OAI_TOOL = {"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def rig(tmp_path: Path, server: FakeLLMServer) -> Iterator[ProxyRig]:
    r = ProxyRig(tmp_path, server.anthropic_base_url)
    yield r
    r.close()


def _usage(row: object) -> tuple[int, int, int, int]:
    r = dict(row)  # type: ignore[call-overload]
    return (r["input_tokens"], r["output_tokens"], r["cache_read_tokens"],
            r["cache_write_tokens"])  # fmt: skip


def test_anthropic_tool_turn_key_added_and_usage_recorded(
    rig: ProxyRig, server: FakeLLMServer
) -> None:
    server.add(
        FakeReply(
            tool_calls=(FakeToolCall("echo", {"x": 1}),),
            input_tokens=123,
            output_tokens=45,
            cache_read_tokens=7,
            cache_write_tokens=3,
        ),
        FakeReply(text="done", input_tokens=200, output_tokens=9),
    )
    client = rig.anthropic()
    first = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[TOOL],
                                   messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert first.content[0].type == "tool_use"
    second = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[TOOL],
        messages=[{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                  {"role": "user", "content": [{"type": "tool_result",
                   "tool_use_id": first.content[0].id, "content": "1"}]}])  # fmt: skip
    assert second.content[0].text == "done"
    assert [r.api_key for r in server.recorded] == [ANT_KEY, ANT_KEY]
    assert all("not-needed" not in json.dumps(r.headers) for r in server.recorded)
    rows = rig.rows()
    assert [_usage(r) for r in rows] == [(123, 45, 7, 3), (200, 9, 0, 0)]
    assert {(r["agent_group_id"], r["session_id"], r["provider"], r["model"], r["status"])
            for r in rows} == {(GROUP, "sess-1", "anthropic", "claude-sonnet-4-6", 200)}  # fmt: skip
    assert rows[0]["cost_usd"] == pytest.approx((123 * 3.0 + 45 * 15.0 + 7 * 0.3 + 3 * 3.75) / 1e6)


def test_anthropic_stream_usage_and_text(rig: ProxyRig, server: FakeLLMServer) -> None:
    server.add(FakeReply(text="streamed reply text", input_tokens=31, output_tokens=17,
                         cache_read_tokens=5))  # fmt: skip
    client = rig.anthropic()
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=50,
                                messages=[{"role": "user", "content": "x"}]) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "streamed reply text"
    assert final.usage.output_tokens == 17
    [row] = rig.rows()
    assert _usage(row) == (31, 17, 5, 0) and row["streamed"] == 1


def test_openai_tool_turn_and_stream(rig: ProxyRig, server: FakeLLMServer) -> None:
    server.add(
        FakeReply(
            tool_calls=(FakeToolCall("echo", {"y": 2}),),
            input_tokens=50,
            output_tokens=6,
            cache_read_tokens=20,
        ),
        FakeReply(text="openai streamed", input_tokens=70, output_tokens=8),
    )
    client = rig.openai()
    first = client.chat.completions.create(model="gpt-4o-mini", tools=[OAI_TOOL],  # type: ignore[list-item]
                                           messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert first.choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "go"}]))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "openai streamed"
    assert [r.api_key for r in server.recorded] == [OAI_KEY, OAI_KEY]
    # the proxy asked for the usage chunk; the recorded figures are the server's
    assert server.requests[1]["stream_options"] == {"include_usage": True}
    rows = rig.rows()
    assert [_usage(r) for r in rows] == [(50, 6, 20, 0), (70, 8, 0, 0)]
    assert [r["streamed"] for r in rows] == [0, 1]
    assert rows[0]["cost_usd"] == pytest.approx((30 * 0.15 + 20 * 0.075 + 6 * 0.6) / 1e6)


def test_client_key_never_forwarded(rig: ProxyRig, server: FakeLLMServer) -> None:
    server.add(FakeReply(text="ok"))
    transport = rig.anthropic()._client._transport
    client = anthropic.Anthropic(api_key="sk-ant-agent-supplied", max_retries=0,
                                 base_url="http://carapace-proxy/anthropic",
                                 http_client=anthropic.DefaultHttpxClient(transport=transport))  # fmt: skip
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                           extra_headers={"authorization": "Bearer sk-agent"})  # fmt: skip
    [rec] = server.recorded
    assert rec.api_key == ANT_KEY and "authorization" not in rec.headers


def test_budget_stops_the_next_call_and_warns(rig: ProxyRig, server: FakeLLMServer) -> None:
    budgets.set_budget(rig.db, GROUP, {"daily_tokens": 100}, rig.now)
    server.add(FakeReply(text="a", input_tokens=60, output_tokens=25), FakeReply(text="b"))
    client = rig.anthropic()
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert len(rig.warnings) == 1 and "85%" in rig.warnings[0][1]
    server.add(FakeReply(text="c", input_tokens=10, output_tokens=5))
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert caught.value.status_code == 402
    assert "budget for Test Group reached" in str(caught.value)
    assert "carapace admin budgets set --scope ag-test --daily-tokens" in str(caught.value)
    assert len(server.recorded) == 2  # the refused call never left the host
    assert len(rig.warnings) == 1  # once per period
    # raising the limit lets calls through again; a reset starts the count afresh
    budgets.set_budget(rig.db, GROUP, {"daily_tokens": 1000}, rig.now)
    server.add(FakeReply(text="d"))
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    budgets.set_budget(rig.db, GROUP, {"daily_tokens": 100}, rig.now)
    budgets.reset_budget(rig.db, GROUP, rig.now.replace(minute=30))
    rig.now = rig.now.replace(minute=31)
    server.add(FakeReply(text="e"))
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_global_default_budget_in_dollars(rig: ProxyRig, server: FakeLLMServer) -> None:
    budgets.set_budget(rig.db, budgets.DEFAULT_SCOPE, {"monthly_usd": 0.001}, rig.now)
    server.add(FakeReply(text="a", input_tokens=1000, output_tokens=0))  # $0.003 on sonnet
    client = rig.anthropic()
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                           messages=[{"role": "user", "content": "x"}])  # fmt: skip
    with pytest.raises(anthropic.APIStatusError, match=r"monthly limit \$0\.00"):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])  # fmt: skip


def test_retry_after_honoured(rig: ProxyRig, server: FakeLLMServer) -> None:
    server.add(
        FakeError(429, "slow down", headers={"retry-after": "7"}),
        FakeError(529, "overloaded", headers={"retry-after-ms": "1500"}),
        FakeError(503, "unavailable"),
        FakeReply(text="finally", input_tokens=3, output_tokens=2),
    )
    reply = rig.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert reply.choices[0].message.content == "finally"
    assert rig.sleeps == [7.0, 1.5, 2.0]  # the third wait: backoff 0.5 * 2**2
    assert len(server.recorded) == 4
    [row] = rig.rows()
    assert _usage(row) == (3, 2, 0, 0)


def test_retries_exhausted_one_clear_error(rig: ProxyRig, server: FakeLLMServer) -> None:
    for _ in range(4):
        server.add(FakeError(529, "overloaded"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        rig.anthropic().messages.create(model="m", max_tokens=5,
                                        messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert caught.value.status_code == 529
    assert "anthropic API answered 529 after 4 tries" in str(caught.value)
    assert rig.sleeps == [0.5, 1.0, 2.0]
    # a retry-after beyond the bound ends the retries at once
    rig.sleeps.clear()
    server.add(FakeError(429, "later", headers={"retry-after": "3600"}))
    with pytest.raises(openai.RateLimitError, match="after 1 try"):
        rig.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert rig.sleeps == []


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_runners_proxy_client_reads_no_ca_bundle(
    rig: ProxyRig, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """A runner reaches the proxy in plain HTTP over the host's socket: TLS never runs in
    its client, so loading the CA bundle (~30-60 ms of a cold start) is not done, and the
    client's TLS context, never used, trusts nothing (it would fail closed)."""
    import ssl

    from carapace.runner.providers._common import PROXY_SOCKET_ENV, proxy_client

    def no_bundle(*_a: object, **_kw: object) -> None:
        raise AssertionError("a CA bundle was loaded")

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", no_bundle)
    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", no_bundle)
    monkeypatch.setenv(PROXY_SOCKET_ENV, str(rig.socket))
    sdk = anthropic if provider == "anthropic" else openai
    made = proxy_client(provider, sdk, 30.0)
    assert made is not None
    base_url, http_client = made
    server.add(FakeReply(text="over the socket"))
    rig.clients.append(http_client)  # closed with the rig
    if provider == "anthropic":
        a = anthropic.Anthropic(api_key="x", base_url=base_url, http_client=http_client,
                                max_retries=0)  # fmt: skip
        reply = a.messages.create(model="claude-haiku-4-5", max_tokens=20,
                                  messages=[{"role": "user", "content": "x"}])  # fmt: skip
        assert reply.content[0].text == "over the socket"
    else:
        o = openai.OpenAI(api_key="x", base_url=base_url, http_client=http_client, max_retries=0)
        done = o.chat.completions.create(model="gpt-4o-mini",
                                         messages=[{"role": "user", "content": "x"}])  # fmt: skip
        assert done.choices[0].message.content == "over the socket"
    assert [r.api_key for r in server.recorded] == [ANT_KEY if provider == "anthropic" else OAI_KEY]


def test_close_ends_the_connections_still_open(
    rig: ProxyRig, caplog: pytest.LogCaptureFixture
) -> None:
    """A runner's SDK keeps its connection to the proxy open between calls. The proxy's
    close ends those connections' handlers too: none is left pending on a loop that is
    about to close (Python then warns "Task was destroyed but it is pending"), and none
    ends as a cancelled task, which Python 3.11's stream server reads with
    ``task.exception()`` and logs as an error with a traceback at every host stop."""
    import logging
    import socket

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(rig.socket))

    async def serving() -> list[asyncio.Task[Any]]:
        for _ in range(500):
            found = [t for t in asyncio.all_tasks()
                     if getattr(t.get_coro(), "__name__", "") == "handle" and not t.done()]  # fmt: skip
            if found:
                return found
            await asyncio.sleep(0.002)
        raise AssertionError("the connection was never served")

    try:
        handlers = rig.call(serving())

        async def close() -> bool:
            await rig.proxy.close()
            for _ in range(3):
                await asyncio.sleep(0)  # (the tasks' done callbacks run)
            return all(t.done() for t in handlers)

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            assert rig.call(close())
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    finally:
        client.close()
