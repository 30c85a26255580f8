"""``network: true``: the sandbox reaches out through slirp4netns, never the host's
loopback (tcp on 127.0.0.1, the slirp gateway that would lead there, abstract sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from carapace.errors import ConfigError
from carapace.sandbox import bwrap_unusable_reason, netns
from carapace.sandbox.bwrap import BwrapBackend, SandboxSpec, bwrap_argv
from carapace.sandbox.process import RunnerSpec

REASON = bwrap_unusable_reason() or (None if netns.slirp_path() else "slirp4netns missing")
if REASON is not None and os.environ.get("CI") == "true":
    raise RuntimeError(f"network sandbox tests cannot run under CI: {REASON}")
needs_net = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def _spec(tmp_path: Path, code: str, info_fd: int) -> SandboxSpec:
    session = tmp_path / "session"
    agent = tmp_path / "agent"
    session.mkdir(exist_ok=True)
    agent.mkdir(exist_ok=True)
    for name in ("inbound.db", "outbound.db"):
        (session / name).touch()
    return SandboxSpec(session_dir=session, agent_dir=agent, network=True, info_fd=info_fd,
                       runner_argv=[sys.executable, "-c", textwrap.dedent(code)])  # fmt: skip


@needs_net
def test_network_true_has_no_host_loopback(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0carapace-netns-{os.getpid()}")
    abstract.listen()
    code = f"""
    import json, socket, time
    for _ in range(100):  # the host attaches slirp4netns right after the start
        if "tap0" in open("/proc/net/dev").read():
            break
        time.sleep(0.05)
    out = {{"tap0": "tap0" in open("/proc/net/dev").read(),
            "resolv": open("/etc/resolv.conf").read()}}
    for name, family, addr in (("lo", socket.AF_INET, ("127.0.0.1", {port})),
                               ("gateway", socket.AF_INET, ("10.0.2.2", {port})),
                               ("abstract", socket.AF_UNIX, "\\0carapace-netns-{os.getpid()}")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect(addr)
            out[name] = "connected"
        except OSError as exc:
            out[name] = type(exc).__name__
    print(json.dumps(out))
    """

    async def go() -> dict[str, object]:
        r, w = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            *bwrap_argv(_spec(tmp_path, code, w)), pass_fds=(w,),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
        os.close(w)
        slirp = await netns.attach_slirp(r)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        with contextlib.suppress(ProcessLookupError):  # (it may have ended with the sandbox)
            slirp.kill()
        await slirp.wait()
        assert proc.returncode == 0, err
        result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    try:
        out = asyncio.run(go())
    finally:
        server.close()
        abstract.close()
    assert out["tap0"] is True and out["resolv"] == netns.RESOLV_CONF
    assert out["lo"] != "connected" and out["gateway"] != "connected"
    assert out["abstract"] != "connected"


@needs_net
def test_slirp_is_given_the_user_namespace_that_owns_the_network_namespace() -> None:
    """An unprivileged bwrap with ``--dev`` nests a second user namespace after making the
    network one; slirp4netns given the sandbox's own (nested) namespace could not enter the
    network namespace (setns: EPERM, ~5 % of starts as a normal user). Here a process in a
    network namespace with a user namespace nested after it, as bwrap leaves it: slirp is
    pointed at the owner, not at the process's own."""
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--net", "unshare", "--user", "sleep", "60"]
    )
    try:
        for _ in range(10_000):  # until both namespaces are made and sleep runs
            with contextlib.suppress(OSError):
                if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep":
                    break
            time.sleep(0.001)
        else:
            raise AssertionError("unshare did not start sleep")
        own = os.stat(f"/proc/{proc.pid}/ns/user").st_ino
        fd = netns._netns_owner(proc.pid)
        try:
            owner = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        assert owner != own  # the nested namespace does not own the network namespace
        assert owner != os.stat("/proc/self/ns/user").st_ino  # nor does ours
    finally:
        proc.kill()
        proc.wait()


def test_network_true_without_slirp_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "slirp_path", lambda: None)
    backend = BwrapBackend(tmp_path, network=True, pass_env=())
    (tmp_path / "s").mkdir()
    spec = RunnerSpec("sess-n", "ag-n", tmp_path / "s", tmp_path)
    with pytest.raises(ConfigError, match="needs slirp4netns"):
        asyncio.run(backend.start(spec))


def test_doctor_reports_network_and_a_wide_secrets_file(tmp_path: Path) -> None:
    from carapace.bootstrap import init_home
    from carapace.config import Home
    from carapace.db import groups
    from carapace.db.central import open_central
    from carapace.migrate.doctor import diagnose

    home = Home(tmp_path / "home")
    init_home(home)
    db = open_central(home.central_db)
    [g] = groups.list_agent_groups(db)
    groups.update_container_config(db, g.id, {"settings": {"network": True}})
    db.close()
    (home.root / "secrets.env").write_text("OPENAI_API_KEY=sk-x\n")
    os.chmod(home.root / "secrets.env", 0o640)
    codes = {f.code for f in diagnose(home).findings}
    assert "secrets-file" in codes
    assert ("network-granted" if netns.slirp_path() else "network-unavailable") in codes
