"""A real host, a real bubblewrap-sandboxed runner, and the mock provider's script as the
hostile agent: each turn runs the agent's tool calls (bash) inside the sandbox."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from carapace.admin.dispatch import dispatch
from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import bwrap_unusable_reason
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

REASON = bwrap_unusable_reason()
# Under CI=true an unusable bwrap fails these tests instead of skipping them.
needs_bwrap = pytest.mark.skipif(
    REASON is not None and os.environ.get("CI") != "true",
    reason=f"bubblewrap unusable: {REASON}",
)


def make_home(root: Path, toml: str = "") -> Home:
    home = Home(root / "home")
    init_home(home)
    home.config_file.write_text('runner_backend = "bwrap"\n' + toml)
    return home


def bash_script(home: Home, commands: dict[str, str], folder: str = "main") -> None:
    """The agent's script: a message ``<word>`` runs ``commands[word]`` in bash, and the
    reply is the command's output."""
    rules: list[dict[str, Any]] = [
        {"match": f"^{word}$", "tool_calls": [{"name": "bash", "arguments": {"command": cmd}}],
         "reply": "OUT[{tool_result}]"}
        for word, cmd in commands.items()
    ]  # fmt: skip
    (home.group_dir(folder) / "mock-script.json").write_text(json.dumps(rules))


def turn(home: Home, text: str, timeout: float = 30) -> str:
    """Start a host, route ``text`` from the CLI chat, return the reply, stop the host
    (so the next turn starts a fresh runner and sandbox)."""
    for key in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(key, None)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False), admin=dispatch)  # fmt: skip

    async def run() -> str:
        await host.start()
        try:
            content = dumps({"text": text, "sender": "t", "senderId": "cli:local"})
            event = InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                                 InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip
            await host.route(event)
            reply = await asyncio.wait_for(channel.got.get(), timeout)
            return str(reply.content)
        finally:
            await host.stop()

    try:
        return asyncio.run(run())
    finally:
        host.close()
