"""Per-runner ``pids`` cgroups (cgroup v1, where the host can make them: root in a container)
belong to the host process that made them: two hosts on one machine never share one, and
what a host that is gone left behind is removed by the next host's start (that start:
tests/sandbox/test_runner_tmp.py). Real cgroups, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.limits import Limits, pids_cgroup_root, remove_cgroup, runner_cgroup, sweep_cgroups

BASE = pids_cgroup_root()
pytestmark = pytest.mark.skipif(
    BASE is None, reason="no per-runner cgroup here (a normal user, or cgroup v2 with systemd)"
)

# a stand-in for another host process: makes the cgroup a runner of session SID gets, puts
# itself in it, prints its path and waits
OTHER_HOST = (
    "import sys, time\n"
    "from carapace.limits import Limits, join_cgroup, runner_cgroup\n"
    "path = runner_cgroup(sys.argv[1], Limits())\n"
    "join_cgroup(path)\n"
    "print(path, flush=True)\n"
    "if sys.argv[2] == 'stay':\n"
    "    time.sleep(120)\n"
)


def _other_host(sid: str, stay: bool) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", OTHER_HOST, sid, "stay" if stay else "go"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line and line != "None", line
    return proc, Path(line)


def _in_cgroup(path: Path) -> subprocess.Popen[bytes]:
    """A sleeping process inside ``path`` (it joins before it sleeps)."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys, time\n"
                             "open(sys.argv[1] + '/cgroup.procs', 'w').write('0\\n')\n"
                             "print(flush=True)\n"
                             "time.sleep(120)\n", str(path)], stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


@pytest.fixture
def made() -> Iterator[list[Path]]:
    paths: list[Path] = []
    yield paths
    for path in paths:
        remove_cgroup(path)


def test_two_hosts_with_one_session_id_never_share_a_cgroup(made: list[Path]) -> None:
    """Two homes with the same session (a copy of a home, a migrated one) on one machine:
    the end of one host's runner used to remove, and so kill, the other host's runner."""
    other, theirs = _other_host("sess-shared", stay=True)
    made.append(theirs)
    try:
        ours = runner_cgroup("sess-shared", Limits())
        assert ours is not None
        made.append(ours)
        assert ours != theirs
        mine = _in_cgroup(ours)
        remove_cgroup(ours)  # our runner ended: what is left of its tree is killed
        assert mine.wait(30) == -9
        assert not ours.exists()
        assert other.poll() is None, "the other host's runner was killed"
        assert str(other.pid) in (theirs / "cgroup.procs").read_text().split()
    finally:
        other.kill()
        other.wait()


def test_a_gone_hosts_cgroups_are_swept_and_a_live_hosts_kept(made: list[Path]) -> None:
    assert BASE is not None
    gone, left = _other_host("sess-gone", stay=False)
    gone.wait(30)
    made.append(left)
    assert left.is_dir()  # a host killed before it removed its runner's cgroup
    older = BASE / f"carapace-spare-{gone.pid}-7"  # a spare's, named as before the pid came first
    older.mkdir()
    made.append(older)
    live, kept = _other_host("sess-live", stay=True)
    made.append(kept)
    ours = runner_cgroup("sess-ours", Limits())
    assert ours is not None
    made.append(ours)
    unrelated = BASE / f"not-carapace-{gone.pid}-1"
    unrelated.mkdir()
    made.append(unrelated)
    try:
        # (the count is not checked: cgroups are the machine's, and a host another test
        # process starts meanwhile sweeps them too, with this same function)
        sweep_cgroups()
        assert not left.exists() and not older.exists()
        assert kept.is_dir() and ours.is_dir() and unrelated.is_dir()
        assert live.poll() is None
    finally:
        live.kill()
        live.wait()


def test_the_ready_spare_and_its_cgroup_end_with_the_host_process(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from carapace.sandbox.process import spare_starter\n"
        "s = spare_starter(sys.executable)\n"
        "s.refill()\n"
        "for _ in range(600):\n"
        "    if s._ready is not None: break\n"
        "    time.sleep(0.05)\n"
        "print(s._ready.cgroup, s._ready.popen.pid, flush=True)\n"
    )  # a normal exit, without closing anything itself
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()  # fmt: skip
    cgroup, pid = Path(out[0]), int(out[1])
    assert not cgroup.exists()
    assert not Path(f"/proc/{pid}").exists()  # ended, and reaped by the host process


def test_a_pid_of_this_process_is_never_swept() -> None:
    ours = runner_cgroup(f"sess-self-{os.getpid()}", Limits())
    assert ours is not None
    try:
        sweep_cgroups()
        assert ours.is_dir()
    finally:
        remove_cgroup(ours)
