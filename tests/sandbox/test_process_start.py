"""Runner processes start off the event loop (``start_child``) and runners import
bytecode the host wrote (``compile_runner_code``). Real processes, real files."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from carapace.sandbox.process import compile_runner_code, start_child
from carapace.testing.loop_ticks import LoopTicks


def test_a_child_started_off_the_loop_reports_its_exit_code(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        with open(tmp_path / "err", "ab") as err:
            child = await start_child([sys.executable, "-c", "import sys; sys.exit(7)"],
                                      env={}, cwd=str(tmp_path), stderr=err)  # fmt: skip
        first = await asyncio.wait_for(child.wait(), 60)
        again = await asyncio.wait_for(child.wait(), 60)  # a second wait gets the same code
        return first, again

    assert asyncio.run(scenario()) == (7, 7)


def test_a_signalled_child_reports_the_signal(tmp_path: Path) -> None:
    async def scenario() -> int:
        with open(tmp_path / "err", "ab") as err:
            child = await start_child([sys.executable, "-c", "import time; time.sleep(60)"],
                                      env={}, cwd=str(tmp_path), stderr=err)  # fmt: skip
        assert os.getpgid(child.pid) == child.pid  # its own process group (killpg works)
        child.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(child.wait(), 60)

    assert asyncio.run(scenario()) == -signal.SIGTERM


def test_the_loop_keeps_running_while_a_slow_preexec_runs(tmp_path: Path) -> None:
    """A cgroup join can take tens of ms between fork and exec: the loop goes on."""

    def slow() -> None:  # pragma: no cover - runs in the child
        time.sleep(0.5)

    async def scenario() -> int:
        async with LoopTicks(0.01) as ticks:
            with open(tmp_path / "err", "ab") as err:
                child = await start_child([sys.executable, "-c", "pass"], env={},
                                          cwd=str(tmp_path), stderr=err, preexec_fn=slow)  # fmt: skip
            seen = ticks.count
        await asyncio.wait_for(child.wait(), 60)
        return seen

    assert asyncio.run(scenario()) >= 5


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of started processes killed because their start was cancelled."""
    from carapace.sandbox import process

    pids: list[int] = []
    real_kill = process._kill_started

    def kill(fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            pids.append(fut.result().pid)
        real_kill(fut)

    monkeypatch.setattr(process, "_kill_started", kill)
    return pids


def _slow() -> None:  # pragma: no cover - runs in the child
    time.sleep(0.3)


async def _start_then_cancel(tmp_path: Path) -> None:
    """A runner's start whose caller gives up while the fork is still under way (a slow
    ``preexec_fn``)."""
    with open(tmp_path / "err", "ab") as err:
        task = asyncio.create_task(start_child(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            env={}, cwd=str(tmp_path), stderr=err, preexec_fn=_slow))  # fmt: skip
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_start_whose_caller_is_cancelled_is_killed(tmp_path: Path, killed: list[int]) -> None:
    """The caller gives up while the fork is still under way: the process, once made, is
    killed, and not left to run for nobody."""
    from carapace.sandbox.spare import fork_thread

    async def scenario() -> int:
        await _start_then_cancel(tmp_path)
        # the loop runs on: the fork ends (its thread runs jobs in order), the kill follows
        await asyncio.wrap_future(fork_thread.submit(lambda: None))
        deadline = time.monotonic() + 30
        while not killed:
            assert time.monotonic() < deadline, "the started process was never killed"
            await asyncio.sleep(0.01)
        pid = killed[0]
        while _alive(pid):
            assert time.monotonic() < deadline, f"process {pid} outlived its kill"
            await asyncio.sleep(0.01)
        return pid

    assert asyncio.run(scenario()) > 0


def test_a_start_cancelled_as_its_loop_closes_is_killed_all_the_same(
    tmp_path: Path, killed: list[int]
) -> None:
    """As above, but the loop is closed before the fork ends (a host stopping while a
    runner starts): the kill does not wait on that loop, which will never run again."""
    from carapace.sandbox.spare import fork_thread

    asyncio.run(_start_then_cancel(tmp_path))  # the loop is closed; the fork goes on
    fork_thread.submit(lambda: None).result(30)  # the fork has ended (jobs run in order)
    assert len(killed) == 1, "the started process was never killed"
    deadline = time.monotonic() + 30
    while _alive(killed[0]):
        assert time.monotonic() < deadline, f"process {killed[0]} outlived its kill"
        time.sleep(0.01)


def test_bytecode_is_written_for_a_writable_package(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 1\n")
    assert compile_runner_code(pkg)
    tag = sys.implementation.cache_tag
    assert (pkg / "__pycache__" / f"mod.{tag}.pyc").is_file()


def test_a_spare_runs_exactly_what_it_is_given(tmp_path: Path) -> None:
    """Through the spare: the command, its environment, folder, descriptors at the numbers
    named, stderr to the log, the resource limits, its own session; the exit code comes
    back through the same process (same pid as the spare)."""
    import fcntl
    import resource

    from carapace.limits import Limits

    starter = _ready_spare()
    spare_pid = starter._ready.popen.pid
    r, w = os.pipe()
    # a high number the kernel gives out (never os.dup2 onto a fixed one: in a process with
    # other threads that number may be a socket another thread is about to close, which
    # then closes this descriptor; CI saw EBADF so)
    fd = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 57)
    os.close(w)
    out = tmp_path / "out"
    code = (
        "import os, resource, sys\n"
        f"os.write({fd}, b'through the fd')\n"
        "sys.stderr.write('to the log')\n"
        f"open({str(out)!r}, 'w').write(repr((os.getcwd(), os.environ.get('ONLY'), "
        "sorted(os.environ), resource.getrlimit(resource.RLIMIT_NPROC)[0], "
        "resource.getrlimit(resource.RLIMIT_FSIZE)[0], "
        "os.getsid(0) == os.getpid(), open('/proc/self/cgroup').read())))\n"
        "sys.exit(3)\n"
    )

    async def scenario() -> tuple[int, int, Path | None]:
        with open(tmp_path / "log", "ab") as log:
            child, cgroup = await start_runner(
                [sys.executable, "-c", code], name="t", limits=Limits(processes=77, file_size_mb=77),
                env={"ONLY": "this"}, cwd=str(tmp_path), stderr=log, pass_fds=[fd],
                spare=starter,
            )  # fmt: skip
        os.close(fd)
        return child.pid, await asyncio.wait_for(child.wait(), 60), cgroup

    from carapace.sandbox.process import start_runner

    pid, rc, cgroup = asyncio.run(scenario())
    starter.close()
    assert starter.used == 1 and pid == spare_pid
    assert rc == 3
    assert os.read(r, 100) == b"through the fd"
    assert (tmp_path / "log").read_text() == "to the log"
    cwd, only, names, nproc, fsize, leader, groups = eval(out.read_text())
    if cgroup is not None:  # where the host can make pids cgroups (root here): inside it
        assert f"/{cgroup.name}\n" in groups
    assert cwd == str(tmp_path) and only == "this" and leader
    assert set(names) <= {"ONLY", "LC_CTYPE"}  # nothing of the host's environment
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    assert fsize == (77 << 20 if hard == resource.RLIM_INFINITY else min(77 << 20, hard))
    # never RLIMIT_NPROC at the launch: it would count every task of the user, not the
    # sandbox's (the runner sets it on itself inside its user namespace, limits.py)
    assert nproc == resource.getrlimit(resource.RLIMIT_NPROC)[0]


def test_a_spare_whose_host_closes_it_exits(tmp_path: Path) -> None:
    starter = _ready_spare()
    popen = starter._ready.popen
    starter.close()
    assert popen.wait(60) == 0


def test_a_closed_starter_makes_no_more_spares() -> None:
    """close() ends refills too: one asked for after it, or one already due (a start's
    refill waits a second), makes no process: none is left running for nobody."""
    from carapace.sandbox.spare import SpareStarter, fork_thread

    starter = SpareStarter(sys.executable)
    made: list[int] = []
    real = starter._make
    starter._make = lambda n, limits=None: made.append(n) or real(n, limits)  # type: ignore[method-assign]
    starter.close()
    starter.refill()  # asked for after the close (no delay: on the fork thread at once)
    assert fork_thread.submit(lambda: True).result(60)  # the fork thread ran what was before
    starter._filling = True
    starter._fill(7)  # one that was already due when the close came
    assert made == [] and starter._ready is None and not starter._filling


def _ready_spare() -> Any:
    """A spare starter whose spare is made (waited for, at most 60 s)."""
    from carapace.sandbox.spare import SpareStarter

    starter = SpareStarter(sys.executable)
    starter.refill()
    deadline = time.monotonic() + 60
    while starter._ready is None:
        assert time.monotonic() < deadline, "no spare made"
        time.sleep(0.02)
    return starter


def test_a_runner_started_through_a_spare_dies_with_its_host(tmp_path: Path) -> None:
    """The spare is started with no code between fork and exec (a vfork of the host): it
    asks for the parent-death signal itself, and what it execs keeps it, so a killed host
    leaves no runner behind."""
    import subprocess

    host = subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, sys\n"
         "from carapace.limits import Limits\n"
         "from carapace.sandbox import spare as s\n"
         "s.runner_cgroup = lambda *a, **k: None\n"
         "st = s.SpareStarter(sys.executable)\n"
         "ready = asyncio.run(st.make_now(Limits()))\n"
         "p = s.launch(ready, ['/bin/sleep', '120'], env={}, cwd='/', stderr=2, pass_fds=[],\n"
         "             limits=Limits())\n"
         "print(p.pid, flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert host.stdout is not None
    pid = int(host.stdout.readline())
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"/bin/sleep":
        assert time.monotonic() < deadline, "the runner never started"
        time.sleep(0.01)
    host.kill()
    host.communicate()  # (waits, and closes the pipes)
    deadline = time.monotonic() + 60
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the runner outlived its killed host")
        time.sleep(0.02)


def test_a_spare_whose_host_died_before_it_asked_exits_at_once() -> None:
    import subprocess

    from carapace.sandbox.spare import HELPER

    a, b = __import__("socket").socketpair()
    with a, b:
        rc = subprocess.run(
            [sys.executable, "-I", "-S", str(HELPER), str(b.fileno()), "1"],  # 1: not its parent
            pass_fds=(b.fileno(),), timeout=60,
        ).returncode  # fmt: skip
    assert rc == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
