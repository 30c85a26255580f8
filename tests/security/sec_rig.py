"""A hostile agent on a real host: bubblewrap runners driven by the mock provider's script.

The agent's "model" is ``groups/main/mock-script.json``: each rule makes real tool calls
(bash, schedule_task, admin) and replies with ``{tool_result}``, so the test reads what
the agent's code saw in the reply the host delivers.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from carapace.admin.dispatch import dispatch
from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage, OutboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import bwrap_unusable_reason
from carapace.testing.recorder import Recorder
from carapace.timefmt import Clock, iso, new_id

REASON = bwrap_unusable_reason()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPLY_TIMEOUT_S = 60.0


def require_bwrap() -> None:
    """Skip without bubblewrap, except under CI where that fails the run."""
    if REASON is None:
        return
    if IN_CI:
        pytest.fail(f"bubblewrap unusable under CI: {REASON}")
    pytest.skip(f"bubblewrap unusable: {REASON}")


def text_of(message: OutboundMessage) -> str:
    content = message.content
    if isinstance(content, dict):
        return str(content.get("text") or json.dumps(content))
    return str(content)


class SecRig:
    """One temp home, one host (bwrap forced unless ``backend`` says otherwise)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        settings: dict[str, Any] | None = None,
        backend: str = "bwrap",
        runner_env: dict[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.home = Home(tmp_path / "home")
        init_home(self.home)
        self.home.config_file.write_text(f'runner_backend = "{backend}"\n')
        self.channel = Recorder()
        self.host = Host(
            self.home, settings=Settings(runner_idle_exit_s=60.0, default_provider="mock"),
            channels=[self.channel], clock=clock,
            options=HostOptions(sockets=False, runner_env=runner_env or {}), admin=dispatch,
        )  # fmt: skip
        [self.group] = groups.list_agent_groups(self.host.db)
        if settings:
            self.set_settings(settings)

    @property
    def group_dir(self) -> Path:
        return self.home.group_dir("main")

    def set_settings(self, settings: dict[str, Any]) -> None:
        groups.update_container_config(self.host.db, self.group.id, {"settings": settings})

    def script(self, rules: list[dict[str, Any]]) -> None:
        (self.group_dir / "mock-script.json").write_text(json.dumps(rules))

    def bash_rule(self, match: str, command: str, timeout_s: float = 60) -> dict[str, Any]:
        return {"match": match,
                "tool_calls": [{"name": "bash",
                                "arguments": {"command": command, "timeout_s": timeout_s}}],
                "reply": "RESULT:{tool_result}"}  # fmt: skip

    async def ask(self, text: str, timeout: float = REPLY_TIMEOUT_S) -> str:
        content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
        event = InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                             InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip
        await self.host.route(event)
        return await self.reply(timeout)

    async def reply(self, timeout: float = REPLY_TIMEOUT_S) -> str:
        return text_of(await asyncio.wait_for(self.channel.got.get(), timeout))

    def session_id(self) -> str:
        [sid] = list(self.host.pool.running) or [
            r[0] for r in self.host.db.execute("SELECT id FROM sessions")
        ]
        return str(sid)

    async def __aenter__(self) -> SecRig:
        await self.host.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.host.stop()
        finally:
            self.host.close()


def add_script_task(rig: SecRig, script: str, prompt: str = "scripted task") -> str:
    """A due ``task`` row with a pre-task script in the rig's (only) session."""
    from datetime import UTC, datetime

    from carapace.timefmt import sqlite_ts

    sid = rig.session_id()
    session = rig.host.sessions.get(sid)
    assert session is not None
    now = datetime.now(UTC)
    task_id = new_id("task")
    rig.host.sessions.write_message(
        session,
        {"id": task_id, "kind": "task", "timestamp": sqlite_ts(now), "process_after": iso(now),
         "platform_id": CLI_PLATFORM_ID, "channel_type": CLI_CHANNEL,
         "content": dumps({"prompt": prompt, "script": script})},
        now=now, due=iso(now),
    )  # fmt: skip
    rig.host.pool.wake(sid)
    return task_id
