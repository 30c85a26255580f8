"""Packages that really install per group (carapace.packages): pip and npm into the
group's own prefix, in a sandbox whose only way out is a registries-only proxy, then used
by the agent's bash inside that group's bubblewrap sandbox."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.errors import ValidationError
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.packages.egress import RegistryProxy
from carapace.packages.install import check_names, group_dir, install, log_path
from carapace.sandbox import bwrap_unusable_reason
from carapace.sandbox.bwrap import SandboxSpec, bwrap_argv
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


def test_package_names_are_bare_names() -> None:
    for bad in (("six==1.0",), ("git+https://x",), ("-e.",), ("../x",), ("a b",)):
        with pytest.raises(ValidationError):
            check_names(list(bad), [], [])
    with pytest.raises(ValidationError):
        check_names([], ["left-pad@1.0"], [])
    check_names(["six", "python-dateutil"], ["@scope/pkg", "is-number"], ["jq"])


def test_registry_proxy_refuses_everything_but_the_registries(tmp_path: Path) -> None:
    lines: list[str] = []
    proxy = RegistryProxy(tmp_path / "r.sock", lines.append)
    try:
        for request in (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
                        b"CONNECT pypi.org:80 HTTP/1.1\r\n\r\n",
                        b"GET http://pypi.org/simple/ HTTP/1.1\r\n\r\n"):  # fmt: skip
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(tmp_path / "r.sock"))
            c.sendall(request)
            assert c.recv(100).startswith(b"HTTP/1.1 403")
            c.close()
    finally:
        proxy.close()
    assert len(lines) == 3 and all(line.startswith("refused:") for line in lines)


def test_sandbox_sees_only_its_own_group_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "data" / "packages" / "ag-1"
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "npm" / "lib" / "node_modules").mkdir(parents=True)
    base = dict(session_dir=tmp_path / "s", agent_dir=tmp_path / "a", runner_argv=["true"])
    (tmp_path / "s").mkdir()
    (tmp_path / "a").mkdir()
    argv = bwrap_argv(SandboxSpec(**base, packages_dir=prefix))  # type: ignore[arg-type]
    env = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    assert env["PATH"].startswith(f"{prefix}/venv/bin:")
    assert env["NODE_PATH"] == f"{prefix}/npm/lib/node_modules"
    i = argv.index(str(prefix))
    assert argv[i - 1] == "--ro-bind" and argv[i + 1] == str(prefix)
    other = bwrap_argv(SandboxSpec(**base, packages_dir=tmp_path / "data" / "packages" / "ag-2"))  # type: ignore[arg-type]
    assert str(prefix) not in other and "NODE_PATH" not in other


@needs_bwrap
def test_pip_and_npm_install_then_used_by_the_agents_bash(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    [g] = groups.list_agent_groups(host.db)
    report = install(home, g.id, pip=["six"], npm=["is-number"], apt=["jq"])
    assert report.installed == ["pip:six", "npm:is-number"], (
        report.text(),
        log_path(home, g.id).read_text(),
    )
    assert [n for n, _ in report.failed] == ["apt:jq"]
    log = log_path(home, g.id).read_text()
    assert "[egress] connect: pypi.org" in log and "[egress] connect: registry.npmjs.org" in log
    assert (group_dir(home, g.id) / "venv" / "bin" / "python").exists()

    groups.update_container_config(host.db, g.id, {"provider": "mock"})
    command = ("python3 -c 'import six, sys; print(\"six\", six.__version__, sys.prefix)'; "
               "node -e 'console.log(\"isnum\", require(\"is-number\")(5))'")  # fmt: skip
    script = [{"match": "use", "tool_calls": [{"name": "bash", "arguments": {"command": command}}],
               "reply": "{tool_result}"}]  # fmt: skip
    (home.groups_dir / g.folder / "mock-script.json").write_text(json.dumps(script))

    async def go() -> str:
        await host.start()
        try:
            await host.route(_event("use the packages"))
            reply = await asyncio.wait_for(channel.got.get(), 60)
            content = reply.content
            doc = content if isinstance(content, dict) else json.loads(content)
            return str(doc["text"])
        finally:
            await host.stop()
            host.close()

    text = asyncio.run(go())
    assert "six 1." in text and str(group_dir(home, g.id) / "venv") in text, text
    assert "isnum true" in text, text
    assert sys.prefix not in text.split("six", 1)[1].split("\n", 1)[0]
