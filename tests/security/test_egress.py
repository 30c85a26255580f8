"""A hostile agent in the default sandbox looks for a provider key and for a way out.

Real host, real bubblewrap runner, the real anthropic SDK talking to the fake provider
server through the host's egress proxy; the fake model's script makes the tool calls."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage, OutboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.proxy import budgets
from carapace.sandbox import bwrap_unusable_reason
from carapace.testing.fake_llm import FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

pytest.importorskip("anthropic")
REASON = bwrap_unusable_reason()
if REASON is not None and os.environ.get("CI") == "true":
    raise RuntimeError(f"bubblewrap unusable under CI: {REASON}")
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")

KEY = "sk-ant-host-secret-4242424242"


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


class Listener:
    """A TCP service on the host's 127.0.0.1 and one on an abstract unix socket; counts
    connections accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.abstract_name = f"carapace-probe-{os.getpid()}-{id(self)}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract_name)
        self.unix.listen()
        for s in (self.tcp, self.unix):
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.tcp.close()
        self.unix.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


PROBE = """
import socket, sys
for family, addr in ((socket.AF_INET, ("127.0.0.1", PORT)), (socket.AF_UNIX, "\\0NAME")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        print("CONNECTED", addr)
    except OSError as exc:
        print("REFUSED", type(exc).__name__)
"""


def _text(message: OutboundMessage) -> str:
    content = message.content
    return str(content.get("text") if isinstance(content, dict) else content)


async def _converse(host: Host, channel: Recorder, *texts: str) -> tuple[list[str], list[str]]:
    """Replies to each text, and budget warnings (which go to the owner's DM: here the
    same CLI chat)."""
    await host.start()
    out: list[str] = []
    warnings: list[str] = []
    try:
        for text in texts:
            await host.route(_event(text))
            while True:
                reply = _text(await asyncio.wait_for(channel.got.get(), 60))
                if reply.startswith("Budget warning"):
                    warnings.append(reply)
                    continue
                out.append(reply)
                break
    finally:
        await host.stop()
    return out, warnings


def _host(tmp_path: Path, srv: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
          settings: dict[str, Any] | None = None) -> tuple[Host, Recorder]:  # fmt: skip
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    home = Home(tmp_path / "home")
    init_home(home)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    [g] = groups.list_agent_groups(host.db)
    groups.update_container_config(host.db, g.id, {"provider": "anthropic", "settings": {
        "base_url": srv.anthropic_base_url, "bash": "allowed", **(settings or {})}})  # fmt: skip
    return host, channel


@needs_bwrap
def test_no_key_and_no_way_out_from_the_default_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    probe = PROBE.replace("PORT", str(listener.port)).replace("NAME", listener.abstract_name)
    hunt = (
        "env; echo ---; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; "
        "grep -rIl sk-ant- $HOME /tmp /run /proc/[0-9]*/cmdline 2>/dev/null; echo ---; "
        "ls /run/carapace; ip addr 2>/dev/null || cat /proc/net/dev"
    )
    with FakeLLMServer() as srv:
        srv.add(
            FakeReply(
                tool_calls=(
                    FakeToolCall("bash", {"command": hunt}),
                    FakeToolCall("bash", {"command": f"{sys.executable} probe.py"}),
                )
            ),
            FakeReply(text="nothing found"),
        )
        host, channel = _host(tmp_path, srv, monkeypatch)
        (host.home.group_dir("main") / "probe.py").write_text(probe)
        try:
            [reply], _ = asyncio.run(_converse(host, channel, "look for keys"))
        finally:
            host.close()
        assert reply == "nothing found"
        assert [r.api_key for r in srv.recorded] == [KEY, KEY]  # the host added it upstream
        results = [m for m in srv.requests[1]["messages"] if m["role"] == "user"][-1]["content"]
        text = "\n".join(str(b.get("content")) for b in results)
    assert "PWD=" in text and text.count("---") >= 3  # the hunt ran (bash's own, minimal env)
    assert "proxy.sock" in text
    assert text.count("REFUSED") == 2 and "CONNECTED" not in text, text
    assert listener.accepted == 0
    assert KEY not in text and "sk-ant-" not in text.replace("grep -rIl sk-ant-", "")
    # nowhere in the home: session files, runner logs, DB, transcripts
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert KEY.encode() not in path.read_bytes(), path


@needs_bwrap
def test_budget_stops_a_loop_and_the_user_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeLLMServer() as srv:
        srv.add(FakeReply(text="first answer", input_tokens=40, output_tokens=20))
        host, channel = _host(tmp_path, srv, monkeypatch)
        [g] = groups.list_agent_groups(host.db)
        budgets.set_budget(host.db, g.id, {"daily_tokens": 50}, host.now())
        try:
            replies, warnings = asyncio.run(_converse(host, channel, "one", "two"))
        finally:
            host.close()
        assert replies[0] == "first answer"
        assert len(warnings) == 1 and "120% of the daily limit 50 tokens" in warnings[0]
        assert f"budget for {g.name} reached" in replies[1]
        assert "carapace admin budgets set" in replies[1]
        assert len(srv.recorded) == 1
