"""Providers: registry, the scripted mock, and the real SDKs against local fake servers."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from carapace.errors import ProviderError, ValidationError
from carapace.runner.providers import (
    Message,
    Provider,
    ProviderAPIError,
    ProviderConfig,
    ToolSpec,
    Turn,
    create_provider,
    provider_names,
    register_provider,
)
from carapace.runner.providers.anthropic_provider import to_anthropic_messages
from carapace.runner.providers.mock import DEFAULT_PREFIX, MockProvider, last_user_text
from carapace.runner.providers.openai_provider import parse_arguments, to_openai_messages
from carapace.testing.fake_llm import (
    FakeError,
    FakeLLMProcess,
    FakeLLMServer,
    FakeReply,
    FakeToolCall,
    ScriptItem,
)

KEY = "sk-test-SECRET-0123456789"
TIME_TOOL = ToolSpec(
    name="get_time",
    description="The current time in a time zone.",
    input_schema={"type": "object", "properties": {"tz": {"type": "string"}}},
)


def run_exchange(
    provider: Provider,
    user_text: str,
    tool_impl: Callable[[str, dict[str, Any]], str] = lambda name, args: f"{name} ok",
    *,
    tools: list[ToolSpec] | None = None,
    history: list[Message] | None = None,
    max_calls: int = 10,
) -> tuple[Turn, list[Message]]:
    """Drive the tool loop the way the runner does; return the final turn and messages."""
    messages: list[Message] = [*(history or []), {"role": "user", "content": user_text}]
    for _ in range(max_calls):
        turn = provider.complete("You are a test.", messages, tools or [TIME_TOOL])
        messages.append(turn.as_message())
        if not turn.tool_calls:
            return turn, messages
        for call in turn.tool_calls:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "name": call.name,
                    "content": tool_impl(call.name, call.arguments),
                    "is_error": False,
                }
            )
    raise AssertionError("the tool loop did not end")


def prompt(*texts: str) -> str:
    """A prompt shaped like the runner's formatter output (spec/runner.md §6)."""
    elements = [
        f'<message id="{i + 1}" sender="Ann" time="Feb 4, 2026, 9:00 AM">{t}</message>'
        for i, t in enumerate(texts)
    ]
    body = (
        elements[0]
        if len(elements) == 1
        else "<messages>\n" + "\n".join(elements) + "\n</messages>"
    )
    return f'<context timezone="UTC" />\n{body}'


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# -- registry -------------------------------------------------------------------


def test_builtins_are_registered_in_order() -> None:
    assert provider_names()[:3] == ["mock", "anthropic", "openai"]
    assert isinstance(create_provider(ProviderConfig(name="mock")), MockProvider)


def test_unknown_provider_lists_registered_names() -> None:
    with pytest.raises(
        ProviderError, match=r"^Unknown provider: bogus\. Registered: mock, anthropic, openai"
    ):
        create_provider(ProviderConfig(name="bogus"))


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"^Provider already registered: mock$"):
        register_provider("mock", MockProvider)


@pytest.mark.parametrize("sdk", ["anthropic", "openai"])
def test_missing_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch, sdk: str) -> None:
    monkeypatch.setitem(sys.modules, sdk, None)  # makes `import <sdk>` fail
    monkeypatch.delitem(sys.modules, f"carapace.runner.providers.{sdk}_provider", raising=False)
    with pytest.raises(ProviderError, match=rf"pip install 'carapace\[{sdk}\]'"):
        create_provider(ProviderConfig(name=sdk, api_key=KEY))


@pytest.mark.parametrize("name", ["anthropic", "openai"])
def test_sdk_provider_without_key_or_url_fails_clearly(name: str) -> None:
    with pytest.raises(ProviderError, match="needs an API key"):
        create_provider(ProviderConfig(name=name))


# -- mock: default ----------------------------------------------------------------


def test_mock_default_quotes_last_message_of_formatted_prompt() -> None:
    text = prompt(
        "first",
        '\n  <quoted_message from="Ann">first</quoted_message>\nTom &amp; Jerry &lt;3 &quot;x&quot;',
    )
    turn = MockProvider().complete("", [{"role": "user", "content": text}], [])
    assert turn.text == DEFAULT_PREFIX + '"Tom & Jerry ‹3 "x""'  # angle brackets neutralised
    assert turn.text.startswith("Mock reply (no model configured — set a provider")
    assert turn.tool_calls == ()
    assert turn.stop_reason == "end_turn"


def test_mock_default_uses_raw_content_and_cuts_at_200_chars() -> None:
    turn = MockProvider().complete("", [{"role": "user", "content": "x" * 300}], [])
    assert turn.text == DEFAULT_PREFIX + '"' + "x" * 200 + '"'


def test_last_user_text_skips_tool_messages_and_handles_no_user() -> None:
    messages: list[Message] = [
        {"role": "user", "content": prompt("hello")},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "1", "name": "a", "arguments": {}}],
        },
        {"role": "tool", "tool_call_id": "1", "name": "a", "content": "r"},
    ]
    assert last_user_text(messages) == "hello"
    assert last_user_text([]) == ""


# -- mock: scripts -----------------------------------------------------------------

SCRIPT: list[dict[str, Any]] = [
    {
        "match": "(?i)time",
        "tool_calls": [{"name": "get_time", "arguments": {"tz": "UTC", "q": "{user_text}"}}],
        "reply": "It is {tool_result}.",
    },
    {
        "match": "^count",
        "steps": [
            {"tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]},
            {"reply": "halfway", "tool_calls": [{"name": "c", "arguments": {}, "id": "custom"}]},
            {"reply": "done after {tool_result}"},
        ],
    },
    {"match": "explode", "error": "model exploded"},
    {"match": "calls only", "tool_calls": [{"name": "a"}]},
]


def test_mock_script_shortcut_round_trip_with_substitutions() -> None:
    provider = MockProvider(ProviderConfig(extra={"script": SCRIPT}))
    seen: list[tuple[str, dict[str, Any]]] = []

    def tool(name: str, args: dict[str, Any]) -> str:
        seen.append((name, args))
        return "noon"

    turn, messages = run_exchange(provider, prompt("What TIME is it?"), tool)
    assert seen == [("get_time", {"tz": "UTC", "q": "What TIME is it?"})]
    assert turn.text == "It is noon."
    assert messages[1]["tool_calls"][0]["id"] == "mock-call-1"
    assert messages[1]["content"] == ""


def test_mock_script_steps_and_ids_across_the_conversation() -> None:
    provider = MockProvider(ProviderConfig(extra={"script": SCRIPT}))
    _, history = run_exchange(provider, "time please")  # uses mock-call-1
    names: list[str] = []

    def tool(name: str, args: dict[str, Any]) -> str:
        names.append(name)
        return f"r-{name}"

    turn, messages = run_exchange(provider, "count to three", tool, history=history)
    assert names == ["a", "b", "c"]
    assert turn.text == "done after r-c"
    calls = [m for m in messages[len(history) :] if m["role"] == "assistant"]
    assert [c["id"] for c in calls[0]["tool_calls"]] == ["mock-call-2", "mock-call-3"]
    assert calls[1]["content"] == "halfway"
    assert calls[1]["tool_calls"][0]["id"] == "custom"


def test_mock_script_error_rule_unmatched_and_exhausted() -> None:
    provider = MockProvider(ProviderConfig(extra={"script": SCRIPT}))
    with pytest.raises(ProviderError, match=r"^model exploded$"):
        provider.complete("", [{"role": "user", "content": "please explode"}], [])
    turn = provider.complete("", [{"role": "user", "content": "something else"}], [])
    assert turn.text == DEFAULT_PREFIX + '"something else"'
    turn, _ = run_exchange(provider, "calls only")
    assert turn == Turn(text="")  # the steps ran out: an empty final turn ends the loop


def test_mock_script_file_in_agent_dir(tmp_path: Path) -> None:
    (tmp_path / "mock-script.json").write_text(
        json.dumps([{"match": "hi", "reply": "scripted hi"}])
    )
    provider = create_provider(ProviderConfig(name="mock", agent_dir=str(tmp_path)))
    assert (
        provider.complete("", [{"role": "user", "content": prompt("oh hi")}], []).text
        == "scripted hi"
    )
    (tmp_path / "mock-script.json").write_text(json.dumps([{"reply": "edited"}]))
    assert provider.complete("", [{"role": "user", "content": "x"}], []).text == "edited"


def test_the_mock_script_is_read_again_only_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: the script's rules are kept while ``stat`` shows the same file (a file
    written within the last second is read every time: its time may not tell a rewrite)."""
    import time

    script = tmp_path / "mock-script.json"
    script.write_text(json.dumps([{"reply": "one"}]))
    reads: list[Path] = []
    real = Path.read_text

    def read_text(self: Path, *a: Any, **kw: Any) -> str:
        reads.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)
    provider = create_provider(ProviderConfig(name="mock", agent_dir=str(tmp_path)))
    assert isinstance(provider, MockProvider)
    later = [60 * 10**9]  # the clock, this far past the file's times: settled
    provider.clock_ns = lambda: time.time_ns() + later[0]
    ask = [{"role": "user", "content": "x"}]
    assert [provider.complete("", ask, []).text for _ in range(3)] == ["one"] * 3
    assert reads == [script]
    later[0] = 0  # now: a file just written is read every time
    script.write_text(json.dumps([{"reply": "two"}]))
    assert [provider.complete("", ask, []).text for _ in range(2)] == ["two"] * 2
    assert len(reads) == 3
    later[0] = 60 * 10**9
    script.write_text(json.dumps([{"reply": "six"}]))  # (same size: its times tell)
    assert provider.complete("", ask, []).text == "six"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"match": "x"}', "expected a JSON list of rules"),
        ('[{"match": "(", "reply": "x"}]', "rule 0: bad regex"),
        ('[{"match": "x", "replay": "typo"}]', "rule 0: unknown field(s) replay"),
        ('[{"match": "x"}]', "rule 0: needs steps, tool_calls, reply or error"),
        (
            '[{"reply": "ok"}, {"steps": [{"tool_calls": [{"arguments": {}}]}]}]',
            "rule 1 step 0 tool call 0: name",
        ),
        ('[{"steps": [], "reply": "x"}]', "either steps or tool_calls/reply/error"),
        ('[{"tool_calls": [{"name": "a", "arguments": [1]}]}]', "arguments must be an object"),
    ],
)
def test_mock_invalid_script_names_file_and_reason(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "mock-script.json"
    path.write_text(content)
    provider = MockProvider(ProviderConfig(agent_dir=str(tmp_path)))
    with pytest.raises(ProviderError) as info:
        provider.complete("", [{"role": "user", "content": "x"}], [])
    assert str(info.value).startswith(f"Invalid mock script {path}: ")
    assert reason in str(info.value)


# -- anthropic through the real SDK ---------------------------------------------------


def anthropic_provider(srv: FakeLLMServer, **kw: Any) -> Provider:
    settings: dict[str, Any] = {"api_key": KEY, "max_retries": 0, "timeout_s": 5.0, **kw}
    return create_provider(
        ProviderConfig(name="anthropic", base_url=srv.anthropic_base_url, **settings)
    )


def test_anthropic_plain_text_turn() -> None:
    with FakeLLMServer([FakeReply(text="Hello there", input_tokens=12, output_tokens=3)]) as srv:
        turn = anthropic_provider(srv, model="claude-test", max_tokens=100).complete(
            "sys prompt", [{"role": "user", "content": "hi"}], []
        )
    assert turn == Turn(
        text="Hello there", stop_reason="end_turn", input_tokens=12, output_tokens=3
    )
    body = srv.requests[0]
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 100
    assert body["system"] == [
        {"type": "text", "text": "sys prompt", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert "tools" not in body
    assert srv.recorded[0].api_key == KEY


def test_anthropic_tool_use_round_trip() -> None:
    script = [
        FakeReply(
            text="Let me look.", tool_calls=(FakeToolCall("get_time", {"tz": "UTC"}, id="toolu_1"),)
        ),
        FakeReply(text="It is noon."),
    ]
    with FakeLLMServer(script) as srv:
        turn, _ = run_exchange(anthropic_provider(srv), "time?", lambda n, a: f"12:00 {a['tz']}")
    assert turn.text == "It is noon."
    first, second = srv.requests
    assert first["tools"] == [
        {
            "name": "get_time",
            "description": TIME_TOOL.description,
            "input_schema": TIME_TOOL.input_schema,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert second["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "time?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {"tz": "UTC"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00 UTC"}],
        },
    ]


def test_anthropic_conversion_merges_tool_results() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "t1", "name": "a", "arguments": {"x": 1}},
                {"id": "t2", "name": "b", "arguments": {}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "name": "a", "content": "one", "is_error": False},
        {"role": "tool", "tool_call_id": "t2", "name": "b", "content": "boom", "is_error": True},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "user", "content": ""},
    ]
    assert to_anthropic_messages(messages) == [
        {"role": "user", "content": [{"type": "text", "text": "go"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "a", "input": {"x": 1}},
                {"type": "tool_use", "id": "t2", "name": "b", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True},
                {"type": "text", "text": "and then?"},
                {"type": "text", "text": "(empty)"},
            ],
        },
    ]
    with pytest.raises(ProviderError, match="Unsupported message role"):
        to_anthropic_messages([{"role": "system", "content": "x"}])


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (429, True), (401, False), (400, False)]
)
def test_anthropic_http_errors_become_provider_errors(status: int, retryable: bool) -> None:
    error = FakeError(status, message=f"Invalid key {KEY} or whatever")
    with FakeLLMServer([error]) as srv, pytest.raises(ProviderAPIError) as info:
        anthropic_provider(srv).complete("", [{"role": "user", "content": "hi"}], [])
    message = str(info.value)
    assert message.startswith(f"Anthropic API error {status} (")
    assert "\n" not in message
    assert KEY not in message and KEY not in repr(info.value)
    assert "SECRET" not in message
    assert info.value.status_code == status
    assert info.value.retryable is retryable
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_anthropic_unreachable_and_timeout() -> None:
    provider = create_provider(
        ProviderConfig(
            name="anthropic",
            base_url=f"http://127.0.0.1:{closed_port()}",
            api_key=KEY,
            max_retries=0,
        )
    )
    with pytest.raises(
        ProviderAPIError, match=r"Anthropic API unreachable at http://127\.0\.0\.1:"
    ) as info:
        provider.complete("", [{"role": "user", "content": "hi"}], [])
    assert info.value.status_code is None and info.value.retryable
    with FakeLLMServer([FakeReply(text="late", delay_s=5)]) as srv:
        provider = anthropic_provider(srv, timeout_s=0.2)
        with pytest.raises(ProviderAPIError, match=r"Anthropic API timed out after 0\.2s"):
            provider.complete("", [{"role": "user", "content": "hi"}], [])


def test_anthropic_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeLLMServer(["ok"]) as srv:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
        provider = create_provider(ProviderConfig(name="anthropic", max_retries=0))
        assert provider.complete("", [{"role": "user", "content": "hi"}], []).text == "ok"
    assert srv.recorded[0].api_key == "env-key"
    assert srv.requests[0]["model"] == "claude-sonnet-4-6"


# -- openai-compatible through the real SDK -----------------------------------------------


def openai_provider(srv: FakeLLMServer, **kw: Any) -> Provider:
    settings: dict[str, Any] = {"api_key": KEY, "max_retries": 0, "timeout_s": 5.0, **kw}
    return create_provider(ProviderConfig(name="openai", base_url=srv.openai_base_url, **settings))


def test_openai_plain_text_turn() -> None:
    with FakeLLMServer(
        [FakeReply(text="Hello", input_tokens=7, output_tokens=2)], flavour="openai"
    ) as srv:
        turn = openai_provider(srv, max_tokens=50).complete(
            "sys", [{"role": "user", "content": "hi"}], []
        )
    assert turn == Turn(text="Hello", stop_reason="end_turn", input_tokens=7, output_tokens=2)
    body = srv.requests[0]
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 50
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]
    assert "tools" not in body
    assert srv.recorded[0].path == "/v1/chat/completions"
    assert srv.recorded[0].headers["authorization"] == f"Bearer {KEY}"


def test_openai_tool_round_trip_with_malformed_arguments() -> None:
    script = [
        FakeReply(
            tool_calls=(
                FakeToolCall("get_time", {"tz": "UTC"}, id="call_1"),
                FakeToolCall("get_time", id="call_2", raw_arguments='{"tz": "UT'),
            )
        ),
        FakeReply(text="Done."),
    ]
    seen: list[dict[str, Any]] = []

    def tool(name: str, args: dict[str, Any]) -> str:
        seen.append(args)
        return "12:00"

    with FakeLLMServer(script, flavour="openai") as srv:
        turn, messages = run_exchange(openai_provider(srv), "time?", tool)
    assert turn.text == "Done."
    assert seen == [{"tz": "UTC"}, {"_raw": '{"tz": "UT'}]
    assert messages[1]["content"] == ""
    first, second = srv.requests
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": TIME_TOOL.description,
                "parameters": TIME_TOOL.input_schema,
            },
        }
    ]
    assert second["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"_raw": "{\\"tz\\": \\"UT"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    ]


def test_openai_conversion_of_multiple_tool_results() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "working",
            "tool_calls": [
                {"id": "c1", "name": "a", "arguments": {"x": 1}},
                {"id": "c2", "name": "b", "arguments": {}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "a", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "name": "b", "content": "boom", "is_error": True},
        {"role": "assistant", "content": "final", "tool_calls": []},
    ]
    assert to_openai_messages("", messages) == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "working",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "a", "arguments": '{"x": 1}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: boom"},
        {"role": "assistant", "content": "final"},
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("", {}),
        (None, {}),
        ("[1, 2]", {"_raw": "[1, 2]"}),
        ("{oops", {"_raw": "{oops"}),
    ],
)
def test_openai_argument_parsing(raw: str | None, expected: dict[str, Any]) -> None:
    assert parse_arguments(raw) == expected


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (429, True), (401, False)])
def test_openai_http_errors_become_provider_errors(status: int, retryable: bool) -> None:
    error = FakeError(status, message=f"Incorrect API key provided: {KEY[:8]}****6789 / {KEY}")
    with FakeLLMServer([error], flavour="openai") as srv, pytest.raises(ProviderAPIError) as info:
        openai_provider(srv).complete("", [{"role": "user", "content": "hi"}], [])
    message = str(info.value)
    assert message.startswith(f"OpenAI API error {status}")
    assert KEY not in message and "sk-test" not in message and "SECRET" not in message
    assert info.value.status_code == status
    assert info.value.retryable is retryable


def test_openai_keyless_local_endpoint_and_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeLLMServer(["hi from llama"], flavour="openai") as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        provider = create_provider(ProviderConfig(name="openai", model="llama3.2", max_retries=0))
        assert (
            provider.complete("", [{"role": "user", "content": "hi"}], []).text == "hi from llama"
        )
    assert srv.recorded[0].api_key == "not-needed"
    assert srv.requests[0]["model"] == "llama3.2"


def test_openai_unreachable() -> None:
    provider = create_provider(
        ProviderConfig(
            name="openai",
            base_url=f"http://127.0.0.1:{closed_port()}/v1",
            api_key=KEY,
            max_retries=0,
        )
    )
    with pytest.raises(ProviderAPIError, match=r"OpenAI API unreachable at http://127\.0\.0\.1:"):
        provider.complete("", [{"role": "user", "content": "hi"}], [])


# -- the fake servers themselves -------------------------------------------------------


def test_fake_server_exhaustion_default_callable_and_key_check() -> None:
    def echo(body: dict[str, Any]) -> str:
        return "echo: " + str(body["messages"][-1]["content"][0]["text"])

    with FakeLLMServer([echo], require_key=KEY) as srv:
        provider = anthropic_provider(srv)
        assert provider.complete("", [{"role": "user", "content": "ping"}], []).text == "echo: ping"
        with pytest.raises(ProviderAPIError, match=r"500 .*script exhausted"):
            provider.complete("", [{"role": "user", "content": "again"}], [])
        srv.add("more")
        wrong = create_provider(
            ProviderConfig(name="anthropic", base_url=srv.base_url, api_key="wrong", max_retries=0)
        )
        with pytest.raises(ProviderAPIError, match="401"):
            wrong.complete("", [{"role": "user", "content": "x"}], [])
        assert srv.remaining == 1  # a refused request consumes nothing
    with FakeLLMServer([], default="always", flavour="openai") as srv:
        provider = openai_provider(srv)
        assert [
            provider.complete("", [{"role": "user", "content": "x"}], []).text for _ in range(2)
        ] == [
            "always",
            "always",
        ]


def test_fake_server_as_a_subprocess(tmp_path: Path) -> None:
    script: list[ScriptItem] = [
        FakeReply(tool_calls=(FakeToolCall("get_time", {"tz": "UTC"}),)),
        "It is noon.",
    ]
    with FakeLLMProcess(script, workdir=tmp_path, require_key=KEY) as proc:
        assert proc.base_url == f"http://127.0.0.1:{proc.port}"
        provider = create_provider(
            ProviderConfig(name="anthropic", base_url=proc.base_url, api_key=KEY, max_retries=0)
        )
        turn, _ = run_exchange(provider, "time?")
        bodies = proc.requests()
    assert proc.process is None  # stopped
    assert turn.text == "It is noon."
    assert [len(b["messages"]) for b in bodies] == [1, 3]
    assert bodies[1]["messages"][2]["content"][0]["type"] == "tool_result"
    assert (
        json.loads((tmp_path / "fake-llm-script.json").read_text())["responses"][1] == "It is noon."
    )
