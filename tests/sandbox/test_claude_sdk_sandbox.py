"""The Claude Agent SDK provider inside bubblewrap: the bundled Claude Code CLI runs in the
runner's sandbox (no network, no key) and its model calls go through the host's egress
proxy, which adds the key; Claude Code's Bash runs there too, and cannot write the project
settings folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import bwrap_unusable_reason
from carapace.secretsfile import SECRETS_FILE, write_secret
from carapace.testing.fake_llm import FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")
HOST_KEY = "sk-ant-host-only-key-0123456789"


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


def _result_text(request: dict[str, Any]) -> str:
    blocks = request["messages"][-1]["content"]
    out = []
    for b in blocks:
        if b.get("type") == "tool_result":
            c = b["content"]
            out.append(c if isinstance(c, str) else "".join(x.get("text", "") for x in c))
    return "".join(out)


@needs_bwrap
def test_claude_code_in_bwrap_through_the_proxy(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    write_secret(home.root / SECRETS_FILE, {"ANTHROPIC_API_KEY": HOST_KEY})
    channel = Recorder()
    central = home.root / "data" / "v2.db"
    probe = (
        'echo "key=[$ANTHROPIC_API_KEY]"; env | grep -c "host-only-key"; '
        f"test -e {central} && echo central-visible || echo central-hidden; "
        "touch .claude/settings.json 2>/dev/null && echo settings-written || echo settings-ro; "
        "echo in-sandbox=$CARAPACE_SANDBOX"
    )
    script = [
        FakeReply(tool_calls=(FakeToolCall("mcp__carapace__send_message", {"text": "working"}),)),
        FakeReply(tool_calls=(FakeToolCall("Bash", {"command": probe}),)),
        FakeReply(text="Done in the sandbox."),
    ]
    with FakeLLMServer(script) as srv:
        host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                    options=HostOptions(sockets=False))  # fmt: skip
        [g] = groups.list_agent_groups(host.db)
        groups.update_container_config(host.db, g.id, {
            "provider": "claude", "settings": {"base_url": srv.base_url}})  # fmt: skip

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
        requests = list(srv.requests)
        assert srv.structure_errors == []
    assert texts == ["working", "Done in the sandbox."]
    # every model call went through the host's proxy, which added the host's key: the
    # sandbox only ever had the placeholder
    assert recorded and all(r.api_key == HOST_KEY for r in recorded)
    assert "Bash" in {t["name"] for t in requests[0]["tools"]}  # bash: sandboxed, and it is
    out = _result_text(requests[2])
    assert "key=[not-needed]" in out and "\n0\n" in f"\n{out}"
    assert "central-hidden" in out and "settings-ro" in out and "in-sandbox=bwrap" in out
    assert HOST_KEY not in json.dumps(requests)
