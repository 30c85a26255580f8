"""A real host with a real bubblewrap-sandboxed runner, driven by the mock provider's script:
the hostile agent of the security tests (issue 12)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from carapace.admin.dispatch import dispatch
from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.db.session import SessionPaths
from carapace.db.sessions import Session, list_sessions
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import bwrap_unusable_reason
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

REASON = bwrap_unusable_reason()


def require_bwrap() -> None:
    """Skip without bubblewrap, except under ``CI=true``, where its absence fails the run."""
    if REASON is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"bubblewrap unusable under CI: {REASON}")
    pytest.skip(f"bubblewrap unusable: {REASON}")


def event(text: str, platform_id: str = CLI_PLATFORM_ID) -> InboundEvent:
    content = dumps({"text": text, "sender": "owner", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, platform_id, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


def make_home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    init_home(home)
    return home


def make_host(home: Home, channel: Recorder, *, sockets: bool = False) -> Host:
    host = Host(home, settings=Settings(runner_idle_exit_s=120.0), channels=[channel],
                options=HostOptions(sockets=sockets), admin=dispatch)  # fmt: skip
    assert host.backend_note.startswith("bwrap"), host.backend_note
    return host


def main_group(host: Host) -> groups.AgentGroup:
    [g] = [g for g in groups.list_agent_groups(host.db) if g.folder == "main"]
    return g


def write_script(home: Home, folder: str, rules: list[dict[str, Any]]) -> None:
    (home.group_dir(folder) / "mock-script.json").write_text(json.dumps(rules))


def bash_rule(match: str, command: str, reply: str = "done: {tool_result}") -> dict[str, Any]:
    return {"match": match, "tool_calls": [{"name": "bash", "arguments": {"command": command}}],
            "reply": reply}  # fmt: skip


def python_cmd(code: str) -> str:
    """A bash command running ``code`` with the runner's interpreter (inside the sandbox)."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def forge_row_code(outbound: Path, row: dict[str, Any]) -> str:
    """Python source that inserts ``row`` into ``outbound`` as the runner would (odd seq)."""
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return (
        "import sqlite3\n"
        f"c = sqlite3.connect({str(outbound)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=PERSIST')\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "s = c.execute('SELECT COALESCE(MAX(seq), -1) + 2 FROM messages_out').fetchone()[0]\n"
        f"c.execute('INSERT INTO messages_out (seq, {cols}) VALUES (?, {marks})', "
        f"[s, *{list(row.values())!r}])\n"
        "c.execute('COMMIT')\n"
        "print('forged', s)\n"
    )


def sessions_of(host: Host, agent_group_id: str | None = None) -> list[Session]:
    return [s for s in list_sessions(host.db)
            if agent_group_id is None or s.agent_group_id == agent_group_id]  # fmt: skip


def paths_of(host: Host, s: Session) -> SessionPaths:
    return host.sessions.paths(s)


def inbound_rows(
    paths: SessionPaths, sql: str = "SELECT * FROM messages_in ORDER BY seq"
) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{paths.inbound}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def system_notes(paths: SessionPaths) -> list[str]:
    rows = inbound_rows(paths, "SELECT content FROM messages_in WHERE channel_type='agent'")
    out = []
    for r in rows:
        c = json.loads(r["content"])
        if c.get("senderId") == "system":
            out.append(str(c.get("text")))
    return out


async def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``cond`` (cheap, on disk) until truthy; an event wait with a generous timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.05)


async def reply_to(host: Host, channel: Recorder, text: str, timeout: float = 30.0) -> str:
    """Route ``text`` and return the text of the next delivered message."""
    await host.route(event(text))
    msg = await asyncio.wait_for(channel.got.get(), timeout)
    content = msg.content if isinstance(msg.content, dict) else {}
    return str(content.get("text") or "")
