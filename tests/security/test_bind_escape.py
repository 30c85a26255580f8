"""Attack: the agent plants links in its group folder where the host used to bind files
from (issue 12, item 1). bwrap resolved those paths on the host, so a relative link put the
host's folders (its /tmp with the user's tmux socket, /proc) inside the sandbox, and an
absolute link stopped the group's runner from ever starting. The host now binds those
entries from descriptors opened without following links (``open_agent_binds``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.sandbox import bwrap_unusable_reason
from carapace.sandbox.agent_binds import open_agent_binds
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")
MARKER = "host-only-secret-7f3a"


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


def _script(agent_dir: Path, link_target: str) -> None:
    plant = (
        f"ln -sfn {link_target} .claude-fragments; ln -sfn {link_target} CLAUDE.md; echo planted"
    )
    look = "ls -la .claude-fragments/ 2>&1; cat .claude-fragments/secret.txt CLAUDE.md 2>&1; true"
    rules = [
        {"match": "plant", "tool_calls": [{"name": "bash", "arguments": {"command": plant}}],
         "reply": "P: {tool_result}"},
        {"match": "look", "tool_calls": [{"name": "bash", "arguments": {"command": look}}],
         "reply": "L: {tool_result}"},
    ]  # fmt: skip
    (agent_dir / "mock-script.json").write_text(json.dumps(rules))


async def _ask(home: Home, text: str) -> str:
    """One message through a fresh host (so the runner starts anew and binds again)."""
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    await host.start()
    try:
        await host.route(_event(text))
        reply = await asyncio.wait_for(channel.got.get(), 30)
        content = reply.content
        return str(content.get("text", "")) if isinstance(content, dict) else str(content)
    finally:
        await host.stop()
        host.close()


@needs_bwrap
@pytest.mark.parametrize("absolute", [False, True], ids=["relative-link", "absolute-link"])
def test_planted_links_never_bind_host_folders(tmp_path: Path, absolute: bool) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    secret_dir = tmp_path / "host-tmp"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_text(MARKER)
    agent_dir = home.group_dir("main")
    target = str(secret_dir) if absolute else os.path.relpath(secret_dir, agent_dir)
    _script(agent_dir, target)

    planted = asyncio.run(_ask(home, "plant"))
    assert "planted" in planted
    assert (agent_dir / ".claude-fragments").is_symlink()  # the attack is in place

    # Next start: the runner must still start and answer, and see none of the host folder.
    seen = asyncio.run(_ask(home, "look"))
    assert seen.startswith("L:"), seen
    assert MARKER not in seen


def test_open_agent_binds_refuses_links_and_wrong_types(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (agent / "container.json").write_text("{}")
    (agent / "CLAUDE.md").symlink_to(outside)
    (agent / ".claude-fragments").write_text("not a folder")
    fds = open_agent_binds(agent)
    try:
        assert [name for _, name in fds] == ["container.json"]
    finally:
        for fd, _ in fds:
            os.close(fd)


@needs_bwrap
def test_container_json_write_never_follows_a_planted_link(tmp_path: Path) -> None:
    """Attack (issue 12, item 4): ``ln -sf ~/victim.txt .container.json.tmp``; the host's
    next ``container.json`` write used to follow it and overwrite the user's file."""
    home = Home(tmp_path / "home")
    init_home(home)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    agent_dir = home.group_dir("main")
    plant = f"ln -sf {victim} .container.json.tmp; echo planted"
    rules = [{"match": "plant", "tool_calls": [{"name": "bash", "arguments": {"command": plant}}],
              "reply": "P: {tool_result}"}]  # fmt: skip
    (agent_dir / "mock-script.json").write_text(json.dumps(rules))
    assert "planted" in asyncio.run(_ask(home, "plant"))
    assert (agent_dir / ".container.json.tmp").is_symlink()
    assert "mock" in asyncio.run(_ask(home, "hello again")).lower()
    assert victim.read_text() == "precious"
    assert json.loads((agent_dir / "container.json").read_text())["agentGroupId"]


@needs_bwrap
@pytest.mark.parametrize("where", ["CLAUDE.local.md", "import"])
def test_groups_prompt_never_reads_through_a_planted_link(tmp_path: Path, where: str) -> None:
    """Attack (issue 12, item 3): the agent makes ``CLAUDE.local.md`` (or a file it imports
    with ``@…``) a link to the user's key, then asks for ``groups prompt``, which the host
    composes: the key must not come back."""
    home = Home(tmp_path / "home")
    init_home(home)
    key = tmp_path / "id_rsa"
    key.write_text(f"-----BEGIN KEY----- {MARKER}")
    agent_dir = home.group_dir("main")
    if where == "CLAUDE.local.md":
        plant = f"rm -f CLAUDE.local.md; ln -s {key} CLAUDE.local.md; echo planted"
    else:
        plant = f"ln -s {key} notes.md; printf '@./notes.md\\n' > CLAUDE.local.md; echo planted"
    rules = [{"match": "plant", "tool_calls": [{"name": "bash", "arguments": {"command": plant}}],
              "reply": "P: {tool_result}"}]  # fmt: skip
    (agent_dir / "mock-script.json").write_text(json.dumps(rules))
    assert "planted" in asyncio.run(_ask(home, "plant"))
    assert (agent_dir / ("CLAUDE.local.md" if where != "import" else "notes.md")).is_symlink()
    res = subprocess.run(
        [sys.executable, "-m", "carapace", "admin", "--home", str(home.root), "groups",
         "prompt", "main"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "You are Main" in res.stdout  # the real instructions are still composed
    assert MARKER not in res.stdout
