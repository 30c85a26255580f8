"""A spare process for the next runner start (issue 19, runner cold start).

Starting a runner from the host costs, before the runner's own exec: a fork of the host
process and, in the child, joining the runner's own ``pids`` cgroup; on a cgroup v1
hierarchy that join waits for an RCU grace period (12–35 ms measured here). A spare does
all of that ahead of time: a tiny interpreter (``python -I -S``, about 6 MB resident) that
was started in its own session, with the parent-death signal, inside a fresh cgroup, and
then waits on a socket. A start hands it the command line, the environment, the working
folder, the resource limits and the descriptors the runner must inherit (``SCM_RIGHTS``);
it applies the limits, puts the descriptors at the numbers the command line names, and
execs. Its pid, session, cgroup and parent stay those of the runner, so the handles work
unchanged. One spare at most is kept ready, refilled in a thread after each use; a start
that finds none makes one at once and hands it the request (``make_now``): the host is
never forked with code to run between fork and exec, so its fork is a ``vfork`` (a full
fork copied the host's page tables with the GIL held, 3 ms typical and 20-50 ms under
load, a stall of the event loop per start: ``bench concurrent``). The spare runs nothing
it was not given by the host, and exits when the host closes its socket or dies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from carapace.limits import Limits, rlimit_values, runner_cgroup

logger = logging.getLogger(__name__)

REFILL_DELAY_S = 1.0

HELPER = Path(__file__).with_name("spare_exec.py")  # what the spare runs (stdlib only)


class ForkThread:
    """The one long-lived thread every runner and spare is forked from. The parent-death
    signal (``PR_SET_PDEATHSIG``) fires when the *thread* that forked a child ends, not its
    process: a child forked from a pool thread that later exits would be killed with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], object]) -> Future[object]:
        fut: Future[object] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="runner-fork",
                                                daemon=True)  # fmt: skip
                self._thread.start()
        self._queue.put((fn, fut))
        return fut

    def _run(self) -> None:
        while True:
            fn, fut = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)


fork_thread = ForkThread()


@dataclass
class _Ready:
    popen: subprocess.Popen[bytes]
    sock: socket.socket
    cgroup: Path | None


class SpareStarter:
    """At most one ready spare (see the module doc); ``take`` never waits for one."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._ready: _Ready | None = None
        self._filling = False
        self._closed = False  # close() ends refills too: none made after it
        self._count = 0
        self.used = 0  # starts that went through a spare

    def take(self, limits: Limits) -> _Ready | None:
        """The ready spare (its cgroup set to ``limits``), or None; a new one is made in a
        thread either way."""
        with self._lock:
            ready, self._ready = self._ready, None
        self.refill(REFILL_DELAY_S)
        if ready is None or ready.popen.poll() is not None:
            if ready is not None:
                _discard(ready)
            return None
        if ready.cgroup is not None:
            try:
                (ready.cgroup / "pids.max").write_text(f"{limits.processes}\n")
            except OSError:
                _discard(ready)
                return None
        return ready

    async def make_now(self, limits: Limits) -> _Ready:
        """A spare made for this start (none was ready), on the fork thread; its cgroup set
        to ``limits``. Raises when it cannot be made (then the ordinary start)."""
        with self._lock:
            self._count += 1
            n = self._count
        made = await asyncio.wrap_future(fork_thread.submit(lambda: self._make(n, limits)))
        return cast(_Ready, made)

    def refill(self, delay: float = 0.0) -> None:
        """Make a spare if there is none (after ``delay`` s: not beside the start that
        just used one, which it would slow down)."""
        with self._lock:
            if self._filling or self._ready is not None or self._closed:
                return
            self._filling = True
            self._count += 1
            n = self._count
        if delay <= 0:
            fork_thread.submit(lambda: self._fill(n))
            return
        timer = threading.Timer(delay, lambda: fork_thread.submit(lambda: self._fill(n)))
        timer.daemon = True
        timer.start()

    def _fill(self, n: int) -> None:
        with self._lock:
            if self._closed:  # closed while the refill waited
                self._filling = False
                return
        ready = None
        try:
            ready = self._make(n)
        except Exception as exc:  # no spare: starts take the ordinary path
            logger.info("no spare runner process: %s", exc)
        with self._lock:
            self._filling = False
            if ready is not None and self._ready is None and not self._closed:
                self._ready, ready = ready, None
        if ready is not None:
            _discard(ready)

    def _make(self, n: int, limits: Limits | None = None) -> _Ready:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cgroup = runner_cgroup(f"spare-{n}", limits or Limits())
        try:
            # no preexec_fn and no setsid here: the fork is a vfork, no copy of the host's
            # page tables with the GIL held, and the child runs (and execs) in the host's
            # scheduling group; the spare asks for its parent-death signal and makes its
            # session itself (spare_exec.py)
            popen = subprocess.Popen(
                [self.python, "-I", "-S", str(HELPER), str(theirs.fileno()), str(os.getpid()),
                 *([str(cgroup)] if cgroup is not None else [])],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env={}, cwd="/",
                pass_fds=(theirs.fileno(),),  # its own session: made by the spare (setsid)
            )  # fmt: skip
        except BaseException:
            ours.close()
            if cgroup is not None:
                cgroup.rmdir()
            raise
        finally:
            theirs.close()
        return _Ready(popen, ours, cgroup)

    def close(self) -> None:
        """End the ready spare; a refill under way or due later makes none."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, None
        if ready is not None:
            _discard(ready)


def launch(ready: _Ready, argv: Sequence[str], *, env: dict[str, str], cwd: str,
           stderr: int, pass_fds: Sequence[int], limits: Limits) -> subprocess.Popen[bytes]:  # fmt: skip
    """Have the spare exec ``argv`` (``stderr``: a descriptor for its fd 2; ``pass_fds``
    keep their numbers). Raises OSError when the spare cannot be told (then discarded)."""
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if exe is None:
        _discard(ready)
        raise FileNotFoundError(f"{argv[0]} not found")
    req = {"argv": list(argv), "exe": exe, "env": env, "cwd": cwd, "fds": [2, *pass_fds],
           "rlimits": rlimit_values(limits)}  # fmt: skip
    try:
        socket.send_fds(ready.sock, [json.dumps(req).encode()], [stderr, *pass_fds])
    except OSError:
        _discard(ready)
        raise
    ready.sock.close()
    return ready.popen


def _discard(ready: _Ready) -> None:
    ready.sock.close()  # the spare exits on end of file
    try:
        ready.popen.wait(5)
    except subprocess.TimeoutExpired:
        ready.popen.kill()
        ready.popen.wait()
    if ready.cgroup is not None:
        try:
            ready.cgroup.rmdir()
        except OSError:
            pass
