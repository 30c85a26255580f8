"""The Claude Agent SDK provider inside bubblewrap: the bundled Claude Code CLI runs in the
runner's sandbox (no network) and its model calls go through the host's egress proxy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import bwrap_unusable_reason
from carapace.testing.fake_llm import FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


@needs_bwrap
def test_claude_code_in_bwrap_through_the_proxy(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    channel = Recorder()
    script = [
        FakeReply(tool_calls=(FakeToolCall("mcp__carapace__send_message", {"text": "working"}),)),
        FakeReply(text="Done in the sandbox."),
    ]
    with FakeLLMServer(script) as srv:
        host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                    options=HostOptions(sockets=False))  # fmt: skip
        [g] = groups.list_agent_groups(host.db)
        groups.update_container_config(host.db, g.id, {
            "provider": "claude-agent-sdk", "settings": {"base_url": srv.base_url}})  # fmt: skip

        async def go() -> list[str]:
            await host.start()
            try:
                await host.route(_event("do it"))
                got = []
                for _ in range(2):
                    reply = await asyncio.wait_for(channel.got.get(), 120)
                    content = reply.content
                    doc = content if isinstance(content, dict) else json.loads(content)
                    got.append(str(doc["text"]))
                return got
            finally:
                await host.stop()
                host.close()

        texts = asyncio.run(go())
        recorded = list(srv.recorded)
    assert texts == ["working", "Done in the sandbox."]
    # the host's proxy made the calls: the runner's placeholder key never reached the server
    assert recorded and all(r.api_key != "not-needed" for r in recorded)
