"""An unsandboxed runner's temp files go with it, killed or not: its ``TMPDIR`` is a folder
the host made for it (``carapace-tmp-<host pid>-…``) and removes after its exit; a host's
start removes those of hosts that are gone. Before, every runner killed under the
``subprocess`` backend left ``/tmp/carapace-runner-<session>-…`` behind (449 on this
machine after a day of tests). Real runner processes, real folders."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from carapace.channels.fake import FakeChannel
from carapace.config import Home, Settings
from carapace.db.session import SessionPaths, init_session_folder
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend, RunnerSpec
from carapace.limits import pids_cgroup_root
from carapace.sandbox.process import TMP_PREFIX, SubprocessBackend, sweep_tmp_dirs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def tmp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host's temp folder, for this test alone."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_an_unsandboxed_runners_temp_folder_goes_with_it(tmp_path: Path, tmp_base: Path,
                                                         how: signal.Signals) -> None:  # fmt: skip
    sid = f"sess-tmp-{how.name.lower()}"
    paths = SessionPaths.of(tmp_path / "data", "ag-1", sid)
    init_session_folder(paths)
    agent = tmp_path / "groups" / "main"
    agent.mkdir(parents=True)
    backend = SubprocessBackend(spare=False)

    async def scenario() -> tuple[list[str], list[str]]:
        spec = RunnerSpec(sid, "ag-1", paths.root, agent, provider="mock", idle_exit_s=600,
                          env={"CARAPACE_TZ": "UTC"})  # fmt: skip
        handle = await backend.start(spec)
        [mine] = [p for p in tmp_base.iterdir() if p.name.startswith(TMP_PREFIX)]
        assert mine.name.startswith(f"{TMP_PREFIX}{os.getpid()}-")
        assert (mine.stat().st_mode & 0o777) == 0o700
        for _ in range(3000):  # the runner makes its own folder in it at its start
            inside = [p.name for p in mine.iterdir()]
            if inside:
                break
            await asyncio.sleep(0.01)
        (mine / inside[0] / "left-by-a-command").write_text("x")
        handle.signal(how)
        await asyncio.wait_for(handle.wait(), 60)
        return inside, [p.name for p in tmp_base.iterdir()]

    inside, left = asyncio.run(scenario())
    assert inside and inside[0].startswith(f"carapace-runner-{sid}-")
    assert left == []


def test_the_sweep_removes_a_gone_hosts_folders_only(tmp_path: Path, tmp_base: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    gone = tmp_base / f"{TMP_PREFIX}{dead}-a1"
    (gone / "carapace-runner-sess-1-x").mkdir(parents=True)
    (gone / "carapace-runner-sess-1-x" / "f").write_text("x")
    (gone / "link").symlink_to(outside)  # removed as a link, never followed
    live = tmp_base / f"{TMP_PREFIX}{alive}-b2"
    live.mkdir()
    link = tmp_base / f"{TMP_PREFIX}{dead}-c3"
    link.symlink_to(outside)  # planted by someone: not followed, not removed
    file = tmp_base / f"{TMP_PREFIX}{dead}-d4"
    file.write_text("a file")
    other = tmp_base / "carapace-runner-sess-2-y"  # no host pid in the name: not ours to judge
    other.mkdir()
    foreign = tmp_base / f"{TMP_PREFIX}{dead}-e5"
    foreign.mkdir()
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)  # another user's: kept

    assert sweep_tmp_dirs() == (1 if os.geteuid() == 0 else 2)
    assert not gone.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    assert live.is_dir() and link.is_symlink() and file.is_file() and other.is_dir()
    assert foreign.exists() == (os.geteuid() == 0)


def test_a_hosts_start_removes_what_a_gone_host_left(tmp_path: Path, tmp_base: Path) -> None:
    """Its temp folders, and (where the host makes per-runner cgroups: root here) its
    runners' cgroups."""
    dead = _dead_pid()
    gone = tmp_base / f"{TMP_PREFIX}{dead}-z9"
    gone.mkdir()
    base = pids_cgroup_root()
    cgroup = base / f"carapace-{dead}-sess-gone-host" if base is not None else None
    if cgroup is not None:
        cgroup.mkdir()
    host = Host(Home(tmp_path / "home"), settings=Settings(), channels=[FakeChannel("fake")],
                backend=FakeBackend(), options=HostOptions(sockets=False, watch=False))  # fmt: skip

    async def scenario() -> None:
        await host.start(background=False)
        await host.stop()

    try:
        asyncio.run(scenario())
    finally:
        host.close()
        if cgroup is not None and cgroup.exists():
            cgroup.rmdir()
            raise AssertionError("the gone host's cgroup was left")
    assert not gone.exists()


def test_the_network_sandboxes_resolv_conf_goes_with_its_host_process(tmp_base: Path) -> None:
    """One folder per host process (once left behind by every host that ran a network
    sandbox); named as a runner's temp folder, so a killed host's is swept too."""
    code = "from carapace.sandbox.netns import resolv_conf\nprint(resolv_conf(), flush=True)\n"
    env = {**os.environ, "TMPDIR": str(tmp_base)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()  # fmt: skip
    folder = Path(out).parent
    assert folder.parent == tmp_base and folder.name.startswith(TMP_PREFIX)
    assert not folder.exists()
