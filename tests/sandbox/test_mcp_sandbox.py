"""A group's stdio MCP server runs inside the runner's bubblewrap sandbox, started by the
runner the host spawns after the config changed (as an approved add_mcp_server does)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import BwrapHandle, bwrap_unusable_reason
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


@needs_bwrap
def test_stdio_mcp_server_runs_inside_the_sandbox(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    [g] = groups.list_agent_groups(host.db)
    groups.update_container_config(host.db, g.id, {"provider": "mock", "mcp_servers": {
        "t": {"command": sys.executable, "args": ["-m", "carapace.testing.mcp_server"]}}})  # fmt: skip
    agent_dir = home.groups_dir / g.folder
    script = [{"match": "where", "tool_calls": [{"name": "mcp__t__whereami", "arguments": {}}],
               "reply": "server says {tool_result}"}]  # fmt: skip
    (agent_dir / "mock-script.json").write_text(json.dumps(script))

    async def go() -> tuple[str, object]:
        await host.start()
        try:
            await host.route(_event("where are you?"))
            reply = await asyncio.wait_for(channel.got.get(), 60)
            [sid] = list(host.pool.running)
            content = reply.content
            doc = content if isinstance(content, dict) else json.loads(content)
            return str(doc["text"]), host.pool.running[sid].handle
        finally:
            await host.stop()
            host.close()

    text, handle = asyncio.run(go())
    assert isinstance(handle, BwrapHandle)
    assert text.startswith("server says cwd=") and "sandbox=bwrap" in text, text
    assert f"cwd={agent_dir}" in text


@needs_bwrap
def test_http_mcp_server_reached_through_the_host_from_a_sandbox_without_network(
    tmp_path: Path,
) -> None:
    from carapace.testing.mcp_server import serve_http

    home = Home(tmp_path / "home")
    init_home(home)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    [g] = groups.list_agent_groups(host.db)
    script = [{"match": "add", "tool_calls": [{"name": "mcp__web__add",
               "arguments": {"a": 40, "b": 2}}], "reply": "sum {tool_result}"}]  # fmt: skip
    (home.groups_dir / g.folder / "mock-script.json").write_text(json.dumps(script))

    async def go() -> str:
        await host.start()
        try:
            await host.route(_event("add please"))
            reply = await asyncio.wait_for(channel.got.get(), 60)
            content = reply.content
            doc = content if isinstance(content, dict) else json.loads(content)
            return str(doc["text"])
        finally:
            await host.stop()
            host.close()

    with serve_http() as url:
        # loopback: allowed only because the group says web_private (the host's rule)
        groups.update_container_config(host.db, g.id, {
            "provider": "mock", "settings": {"web_private": True},
            "mcp_servers": {"web": {"type": "http", "url": url}}})  # fmt: skip
        text = asyncio.run(go())
    assert text == "sum 42", text
