"""The host starts runners through the sandbox (DESIGN §2, §5; docs/sandbox.md): backend
selection, per agent group settings, and a real round trip through a bubblewrap runner."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import InboundEvent, InboundMessage
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.errors import ConfigError
from carapace.host.host import Host, HostOptions
from carapace.jsonutil import dumps
from carapace.migrate.doctor import diagnose
from carapace.sandbox import BwrapHandle, bwrap_unusable_reason
from carapace.sandbox import bwrap as bwrap_mod
from carapace.sandbox.policy import SandboxBackend
from carapace.sandbox.process import RunnerSpec
from carapace.testing.recorder import Recorder
from carapace.timefmt import iso, new_id

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")
MISSING_BWRAP = "/nonexistent/carapace-test/bwrap"


def _home(tmp_path: Path, toml: str = "") -> Home:
    home = Home(tmp_path / "home")
    init_home(home)
    if toml:
        home.config_file.write_text(toml)
    return home


def _event(text: str) -> InboundEvent:
    content = dumps({"text": text, "sender": "test", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


def _environ(pid: int) -> dict[str, str] | None:
    """The runner's environment; None when the kernel refuses it (the runner is not
    dumpable, so only root reads it: docs/sandbox.md, "Process boundary")."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except PermissionError:
        assert os.geteuid() != 0
        return None
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def _runner_pids(handle_pid: int) -> list[int]:
    out = []
    for pid in [handle_pid, *bwrap_mod._descendants(handle_pid)]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"carapace.runner" in cmd and not cmd.startswith(b"bwrap"):
            out.append(pid)
    return out


async def _round_trip(host: Host, channel: Recorder) -> tuple[str, object, dict[str, str] | None]:
    """Route one message, wait for the reply; returns (session id, handle, runner env)."""
    await host.start()
    try:
        await host.route(_event("hello sandbox"))
        reply = await asyncio.wait_for(channel.got.get(), 20)
        assert reply.content
        [sid] = list(host.pool.running)
        handle = host.pool.running[sid].handle
        assert handle.pid is not None
        pids = _runner_pids(handle.pid)
        assert pids, "no runner process found"
        return sid, handle, _environ(pids[-1])
    finally:
        await host.stop()
        host.close()


@needs_bwrap
def test_host_reply_comes_from_a_runner_inside_bubblewrap(tmp_path: Path) -> None:
    home = _home(tmp_path)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    assert isinstance(host.backend, SandboxBackend)
    assert host.backend_note == "bwrap (auto: strongest available)"
    sid, handle, env = asyncio.run(_round_trip(host, channel))
    assert isinstance(handle, BwrapHandle)
    if env is not None:
        assert env["CARAPACE_SANDBOX"] == "bwrap"
        assert "HOME" in env and env["HOME"].endswith("/groups/main")
    assert isinstance(host.backend, SandboxBackend) and host.backend.used[sid] == "bwrap"


def test_group_setting_none_runs_unsandboxed(tmp_path: Path) -> None:
    home = _home(tmp_path)
    channel = Recorder()
    host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                options=HostOptions(sockets=False))  # fmt: skip
    [g] = groups.list_agent_groups(host.db)
    groups.update_container_config(host.db, g.id, {"settings": {"sandbox": "none"}})
    sid, handle, env = asyncio.run(_round_trip(host, channel))
    assert not isinstance(handle, BwrapHandle)
    if env is not None:
        assert env["CARAPACE_SANDBOX"] == "none"
    assert isinstance(host.backend, SandboxBackend) and host.backend.used[sid] == "subprocess"


def test_auto_without_bwrap_falls_back_and_says_why(tmp_path: Path) -> None:
    home = _home(tmp_path, f'bwrap = "{MISSING_BWRAP}"\n')
    host = Host(home)
    try:
        assert isinstance(host.backend, SandboxBackend)
        assert host.backend.name == "subprocess"
        assert "bwrap unusable" in host.backend_note and "NOT isolated" in host.backend_note
    finally:
        host.close()


def test_forced_bwrap_unusable_is_a_startup_error(tmp_path: Path) -> None:
    home = _home(tmp_path, f'runner_backend = "bwrap"\nbwrap = "{MISSING_BWRAP}"\n')
    with pytest.raises(ConfigError, match="bwrap requested but unusable"):
        Host(home)
    res = subprocess.run([sys.executable, "-m", "carapace", "run", "--home", str(home.root)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode != 0
    assert "bwrap requested but unusable" in res.stderr
    assert "Traceback" not in res.stderr


def test_forced_subprocess_and_unknown_backend(tmp_path: Path) -> None:
    host = Host(_home(tmp_path, 'runner_backend = "subprocess"\n'))
    try:
        assert host.backend.name == "subprocess" and "NOT isolated" in host.backend_note
    finally:
        host.close()
    (tmp_path / "home" / "carapace.toml").write_text('runner_backend = "docker"\n')
    with pytest.raises(ConfigError, match="unknown runner backend"):
        Host(Home(tmp_path / "home"))


@needs_bwrap
def test_group_network_mounts_and_required_bwrap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = tmp_path / "photos"
    allowed.mkdir()
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    home = _home(tmp_path, f'mount_allowlist = ["{allowed}"]\n')
    host = Host(home, options=HostOptions(sockets=False))
    try:
        [g] = groups.list_agent_groups(host.db)
        groups.update_container_config(host.db, g.id, {
            "settings": {"network": False, "sandbox": "bwrap"},
            "additional_mounts": [{"hostPath": str(allowed)}, {"hostPath": str(secret)}],
        })  # fmt: skip
        backend = host.backend
        assert isinstance(backend, SandboxBackend)
        spec = RunnerSpec("sess-x", g.id, tmp_path / "s", home.group_dir("main"))
        with caplog.at_level(logging.WARNING, logger="carapace.sandbox.mounts"):
            sb = backend.bwrap.sandbox_spec(spec)
        assert sb.network is False
        assert [str(m.sandbox_path) for m in sb.mounts] == ["/workspace/extra/photos"]
        assert "additional mount refused" in caplog.text and str(secret) in caplog.text
        assert backend.backend_for(spec) == "bwrap"
        # The refusal is visible in `carapace doctor`.
        codes = {(f.code, f.level) for f in diagnose(home).findings}
        assert ("mount-refused", "warning") in codes
        # A group that requires bwrap does not start without it.
        backend.bwrap_path = MISSING_BWRAP
        with pytest.raises(ConfigError, match="requires sandbox bwrap"):
            backend.backend_for(spec)
        groups.update_container_config(host.db, g.id, {"settings": {"sandbox": "jail"}})
        with pytest.raises(ConfigError, match=r"bad settings\.sandbox"):
            backend.backend_for(spec)
        codes = {(f.code, f.level) for f in diagnose(home).findings}
        assert ("bad-sandbox", "error") in codes
    finally:
        host.close()


def test_runner_env_cannot_fake_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "inbound.db").touch()
    (tmp_path / "outbound.db").touch()
    spec = bwrap_mod.SandboxSpec(tmp_path, tmp_path, ["true"], env={"CARAPACE_SANDBOX": "x"})
    argv = bwrap_mod.bwrap_argv(spec)
    assert argv[argv.index("CARAPACE_SANDBOX") + 1] == "bwrap"
