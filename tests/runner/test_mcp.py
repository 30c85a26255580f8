"""The runner's MCP client against real MCP servers written with the ``mcp`` package
(``carapace.testing.mcp_server``): stdio and streamable HTTP, every provider, a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.db.session import SessionPaths
from carapace.runner.mcp_client import McpHub
from carapace.runner.mcp_config import parse_servers, safe_name
from carapace.testing.fake_llm import FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.mcp_server import serve_http
from carapace.testing.runner_proc import run_once
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_outbound,
    write_chat,
)

STDIO = {"command": sys.executable, "args": ["-m", "carapace.testing.mcp_server"]}


def wait_for(cond: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Callable[..., McpHub]]:
    hubs: list[McpHub] = []

    def make(servers: dict[str, Any], **kw: Any) -> McpHub:
        parsed, problems = parse_servers(servers)
        assert problems == []
        h = McpHub(parsed, cwd=tmp_path, backoff_s=0.05, **kw)
        h.start()
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.close()


def test_config_shapes_and_problems() -> None:
    servers, problems = parse_servers(
        {
            "fs": {"command": "npx", "args": ["-y", "srv"], "env": {"A": "1"}},
            "web": {"url": "https://example.org/mcp", "headers": {"X": "y"}},
            "bad-args": {"command": "x", "args": [1]},
            "old-sse": {"url": "https://x/sse", "type": "sse"},
            "nothing": {},
        }
    )
    assert [(s.name, s.kind) for s in servers] == [("fs", "stdio"), ("web", "http")]
    assert len(problems) == 3 and "old-sse" in problems[1] and "not supported" in problems[1]
    assert safe_name("my.server/x") == "my_server_x"


def test_stdio_server_tools_text_image_and_errors(hub: Callable[..., McpHub]) -> None:
    h = hub({"t.s": STDIO})
    names = [s.name for s in h.specs()]
    assert "mcp__t_s__echo" in names and "mcp__t_s__image" in names
    echo = next(s for s in h.specs() if s.name == "mcp__t_s__echo")
    assert echo.input_schema["properties"]["text"]["type"] == "string"
    assert h.call("mcp__t_s__echo", {"text": "hi"}).content == "echo: hi"
    img = h.call("mcp__t_s__image", {})
    assert not img.is_error and img.images[0]["media_type"] == "image/png"
    failed = h.call("mcp__t_s__fail", {"message": "nope"})
    assert failed.is_error and "nope" in failed.content
    where = h.call("mcp__t_s__whereami", {}).content
    assert f"cwd={h.cwd}" in where


def test_streamable_http_server(hub: Callable[..., McpHub]) -> None:
    with serve_http() as url:
        h = hub({"web": {"url": url}})
        assert h.call("mcp__web__add", {"a": 2, "b": 40}).content == "42"
        h.close()  # before the server: it waits for its open streams to end (10 s)


def test_crashing_server_is_a_tool_error_then_restarted(hub: Callable[..., McpHub]) -> None:
    h = hub({"t": STDIO, "missing": {"command": "/nonexistent/mcp-server"}})
    h.specs()
    missing = h.call("mcp__missing__anything", {})
    assert missing.is_error and "not running" in missing.content
    assert "command not found" in missing.content
    crashed = h.call("mcp__t__crash", {})
    assert crashed.is_error and "crashed or exited" in crashed.content
    assert "being restarted" in crashed.content
    wait_for(lambda: h.status()["t"].startswith("up"))
    assert h.call("mcp__t__echo", {"text": "back"}).content == "echo: back"


def test_stdio_server_survives_the_bash_cleanup(hub: Callable[..., McpHub]) -> None:
    """``kill_descendants`` after each bash command spares the MCP server's session."""
    from carapace.runner import procs

    h = hub({"t": STDIO})
    h.specs()
    old = procs._state["reaper"]
    procs._state["reaper"] = True
    try:
        sub = subprocess.Popen(["sleep", "30"], start_new_session=True)
        procs.kill_descendants()
        assert not Path(f"/proc/{sub.pid}").exists()  # a command's process died (and reaped)
    finally:
        procs._state["reaper"] = old
    assert h.call("mcp__t__echo", {"text": "alive"}).content == "echo: alive"


# -- through the runner, with every provider ------------------------------------------


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    return make_session(
        tmp_path,
        destinations=[channel_dest("family", "telegram", "chat-1")],
        routing=("telegram", "chat-1", None),
    )


def test_mock_provider_calls_an_mcp_tool(session: SessionPaths, tmp_path: Path) -> None:
    script = [{"match": "echo", "tool_calls": [{"name": "mcp__t__echo",
               "arguments": {"text": "{user_text}"}}], "reply": "got {tool_result}"}]  # fmt: skip
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock", "mcpServers": {"t": STDIO}},
                               mock_script=script)  # fmt: skip
    write_chat(session, "echo this", id="m1")
    result = run_once(session, agent_dir)
    assert result.returncode == 0, result.stderr
    assert read_outbound(session)[-1]["content"]["text"] == "got echo: echo this"
    assert "MCP server t started with 6 tools" in result.stderr


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_sdk_providers_call_mcp_tools_with_images(
    flavour: str, session: SessionPaths, tmp_path: Path
) -> None:
    with serve_http() as url:
        servers = {"t": STDIO, "web": {"url": url}}
        agent_dir = make_agent_dir(tmp_path, config={"provider": flavour, "mcpServers": servers})
        script = [
            FakeReply(
                tool_calls=(
                    FakeToolCall("mcp__web__add", {"a": 1, "b": 2}),
                    FakeToolCall("mcp__t__image", {}),
                )
            ),
            FakeReply(text="It is 3 and a picture."),
        ]
        with FakeLLMServer(script, flavour=flavour) as srv:  # type: ignore[arg-type]
            env = {f"{flavour.upper()}_BASE_URL": srv.base_url,
                   f"{flavour.upper()}_API_KEY": "test-key"}  # fmt: skip
            write_chat(session, "add and draw", id="m1")
            result = run_once(session, agent_dir, **env)
            requests = list(srv.requests)
    assert result.returncode == 0, result.stderr
    assert read_outbound(session)[-1]["content"]["text"] == "It is 3 and a picture."
    tools = [t.get("name") or t.get("function", {}).get("name") for t in requests[0]["tools"]]
    assert {"mcp__web__add", "mcp__t__image", "send_message"} <= set(tools)
    sent = json.dumps(requests[1]["messages"])
    assert '"3"' in sent or "'3'" in sent or '"content": "3"' in sent
    if flavour == "anthropic":
        results = requests[1]["messages"][-1]["content"]
        image = results[1]["content"]
        assert image[1]["type"] == "image" and image[1]["source"]["media_type"] == "image/png"
    else:
        last = requests[1]["messages"][-1]
        assert last["role"] == "user" and last["content"][1]["type"] == "image_url"
        assert last["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_claude_code_calls_mcp_tools_by_their_nanoclaw_names(
    session: SessionPaths, tmp_path: Path
) -> None:
    """The ``claude`` provider hands each MCP server to Claude Code as its own server, so the
    model sees NanoClaw's ``mcp__<server>__<tool>``; text and image results come back."""
    pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
    with serve_http() as url:
        servers = {"t": STDIO, "web": {"url": url}}
        agent_dir = make_agent_dir(tmp_path, config={"provider": "claude", "mcpServers": servers})
        script = [
            FakeReply(tool_calls=(FakeToolCall("mcp__web__add", {"a": 1, "b": 2}),)),
            FakeReply(tool_calls=(FakeToolCall("mcp__t__image", {}),)),
            FakeReply(text="It is 3 and a picture."),
        ]
        with FakeLLMServer(script) as srv:
            write_chat(session, "add and draw", id="m1")
            result = run_once(session, agent_dir, ANTHROPIC_BASE_URL=srv.base_url,
                              ANTHROPIC_API_KEY="test-key")  # fmt: skip
            requests = list(srv.requests)
            assert srv.structure_errors == []
    assert result.returncode == 0, result.stderr
    assert read_outbound(session)[-1]["content"]["text"] == "It is 3 and a picture."
    tools = {t["name"] for t in requests[0]["tools"]}
    assert {
        "mcp__web__add",
        "mcp__t__image",
        "mcp__t__echo",
        "mcp__carapace__send_message",
    } <= tools
    assert not any(t.startswith("mcp__carapace__mcp__") for t in tools)
    assert "3" in json.dumps(requests[1]["messages"][-1])
    [block] = requests[2]["messages"][-1]["content"][:1]
    kinds = [c.get("type") for c in block["content"]]
    assert block["type"] == "tool_result" and "image" in kinds


def test_prompt_section_says_state_and_instructions(hub: Callable[..., McpHub]) -> None:
    h = hub({"t": {**STDIO, "instructions": "Prefer t for echoing."},
             "gone": {"command": "/nonexistent/srv"}})  # fmt: skip
    section = h.prompt_section()
    assert "- t: running, tools mcp__t__*" in section
    assert "Prefer t for echoing." in section and "Echo repeats; add adds." in section
    assert "- gone: not running (command not found" in section
