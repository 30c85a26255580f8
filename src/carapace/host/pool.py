"""The runner pool: one runner process per active session, started through a backend.

* ``RunnerBackend`` is the seam for sandboxes (``subprocess`` now; ``bwrap``/``docker``
  later slot in by implementing ``start``). The pool never looks inside a handle beyond
  ``pid``, ``wait`` and ``signal``.
* A cap (``max_runners``) with a FIFO queue; spawning is awaited, never done inline.
* Each session dir gets ``.runner.pid`` (``<pid> <start time>``) so orphans left by a
  crashed host are reaped at the next start (spec §5.10, §7.8 item 3).
* ``stop`` sends SIGTERM to the runner's process group, then SIGKILL after the grace.
* Exits are reported to ``on_exit(session_id, RunnerExit)``; the host decides there
  whether the exit costs the claimed messages a try (spec §11.1 item 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from carapace.limits import (
    Limits,
    join_cgroup,
    remove_cgroup,
    rlimit_preexec,
    runner_cgroup,
    scope_argv,
    systemd_scope_usable,
)

logger = logging.getLogger(__name__)

PID_FILE = ".runner.pid"
LOG_FILE = ".runner.log"
# The host variables a runner may get (docs/sandbox.md "Process boundary"); everything else
# of the host's environment stays out. Providers' settings come from the backend's pass_env.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH")


@dataclass(frozen=True)
class RunnerSpec:
    session_id: str
    agent_group_id: str
    session_dir: Path
    agent_dir: Path
    provider: str | None = None
    idle_exit_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)  # the agent group's (carapace.limits)
    proxy_socket: Path | None = None  # the host's egress proxy for this session (host path)


# Provider keys: only the host's egress proxy holds them (carapace.proxy); no runner gets
# them in its environment, sandboxed or not.
SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")
PROXY_SOCKET_ENV = "CARAPACE_PROXY_SOCKET"


class RunnerHandle(Protocol):
    pid: int | None

    async def wait(self) -> int: ...

    def signal(self, sig: int) -> None: ...


class RunnerBackend(Protocol):
    name: str

    async def start(self, spec: RunnerSpec) -> RunnerHandle: ...


@dataclass(frozen=True)
class RunnerExit:
    returncode: int
    reason: str | None  # None: the runner exited on its own (idle exit or crash)
    count_try: bool
    started_at: datetime


def runner_env(spec: RunnerSpec, pass_env: Sequence[str]) -> dict[str, str]:
    """A runner's whole environment: allow-listed host variables, then ``spec.env``."""
    names = (*BASE_ENV, *pass_env)
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    env.update(spec.env)
    return env


def child_setup(limits: Limits, cgroup: Path | None = None) -> Callable[[], None]:
    """``preexec_fn`` of a runner: die with the host, join its cgroup, the group's rlimits."""
    apply_limits = rlimit_preexec(limits)

    def setup() -> None:  # pragma: no cover - runs in the child
        _pdeathsig()
        join_cgroup(cgroup)
        apply_limits()

    return setup


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Runners die with the host (Linux): no orphan keeps working after a host crash."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class ProcHandle:
    """The pool's handle on one runner process (its own process group)."""

    def __init__(self, proc: asyncio.subprocess.Process, cgroup: Path | None = None) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.cgroup = cgroup  # the runner's own pids cgroup, removed after its exit

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.cgroup is not None:
            remove_cgroup(self.cgroup)
            self.cgroup = None
        return code

    def signal(self, sig: int) -> None:
        if self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self.proc.send_signal(sig)


class SubprocessBackend:
    """No isolation: ``python -m carapace.runner`` as a child process (development, tests)."""

    name = "subprocess"

    def __init__(
        self,
        module: str = "carapace.runner",
        python: str | None = None,
        pass_env: Sequence[str] | None = None,
    ) -> None:
        self.module = module
        self.python = python or sys.executable
        if pass_env is None:
            from carapace.sandbox.bwrap import DEFAULT_PASS_ENV

            pass_env = DEFAULT_PASS_ENV
        self.pass_env = tuple(pass_env)

    def argv(self, spec: RunnerSpec) -> list[str]:
        argv = [self.python, "-m", self.module, "--session-dir", str(spec.session_dir),
                "--agent-dir", str(spec.agent_dir)]  # fmt: skip
        if spec.provider:
            argv += ["--provider", spec.provider]
        if spec.idle_exit_s is not None:
            argv += ["--idle-exit", f"{spec.idle_exit_s:g}"]
        return argv

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        env = {k: v for k, v in runner_env(spec, self.pass_env).items() if k not in SECRET_ENV}
        env.pop(PROXY_SOCKET_ENV, None)
        if spec.proxy_socket is not None:
            env[PROXY_SOCKET_ENV] = str(spec.proxy_socket)
        argv = self.argv(spec)
        if systemd_scope_usable():
            argv = [*scope_argv(spec.limits), *argv]
        cgroup = runner_cgroup(spec.session_id, spec.limits)
        log = open(spec.session_dir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=str(spec.agent_dir),
                start_new_session=True,
                preexec_fn=child_setup(spec.limits, cgroup)
                if sys.platform.startswith("linux")
                else None,
            )
        finally:
            log.close()
        return ProcHandle(proc, cgroup)


@dataclass
class _Running:
    handle: RunnerHandle
    started_at: datetime
    stop_reason: str | None = None
    count_try: bool = False
    waiter: asyncio.Task[None] | None = None


class RunnerPool:
    def __init__(
        self,
        backend: RunnerBackend,
        *,
        max_runners: int,
        prepare: Callable[[str], RunnerSpec | None],
        on_exit: Callable[[str, RunnerExit], None],
        on_started: Callable[[str], None] = lambda sid: None,
        now: Callable[[], datetime],
        grace_s: float = 1.0,
        idle_since: Callable[[str], datetime | None] = lambda sid: None,
    ) -> None:
        self.backend = backend
        # ``idle_since(sid)``: when the session's runner last had work, or None while it has
        # some. With the cap reached and work queued, the longest-idle runner yields its slot.
        self.idle_since = idle_since
        self._yielding: set[str] = set()
        self.max_runners = max(1, max_runners)
        self.prepare = prepare
        self.on_exit = on_exit
        self.on_started = on_started
        self.now = now
        self.grace_s = grace_s
        self.running: dict[str, _Running] = {}
        self._spawning: dict[str, asyncio.Task[bool]] = {}
        self._queue: deque[str] = deque()
        self._closed = False
        self.spawn_count = 0

    def is_running(self, session_id: str) -> bool:
        return session_id in self.running or session_id in self._spawning

    def started_at(self, session_id: str) -> datetime | None:
        r = self.running.get(session_id)
        return None if r is None else r.started_at

    def spawning(self) -> list[str]:
        return list(self._spawning)

    def queued(self) -> list[str]:
        return list(self._queue)

    def wake(self, session_id: str) -> None:
        """Make sure a runner runs (or is queued) for the session. Never blocks."""
        if self._closed or self.is_running(session_id) or session_id in self._queue:
            return
        if len(self.running) + len(self._spawning) >= self.max_runners:
            logger.info("runner cap %d reached; session %s queued", self.max_runners, session_id)
            self._queue.append(session_id)
            self.make_room()
            return
        self._spawning[session_id] = asyncio.get_running_loop().create_task(
            self._spawn(session_id), name=f"spawn-{session_id}"
        )

    async def wake_and_wait(self, session_id: str) -> bool:
        self.wake(session_id)
        task = self._spawning.get(session_id)
        if task is not None:
            return await task
        return session_id in self.running

    async def _spawn(self, session_id: str) -> bool:
        try:
            spec = self.prepare(session_id)
            if spec is None:
                return False
            pidfile = spec.session_dir / PID_FILE
            handle = await self.backend.start(spec)
            run = _Running(handle, self.now())
            self.running[session_id] = run
            self.spawn_count += 1
            if handle.pid is not None:
                with contextlib.suppress(OSError):
                    pidfile.write_text(f"{handle.pid} {proc_start_time(handle.pid) or ''}\n")
            run.waiter = asyncio.get_running_loop().create_task(
                self._watch(session_id, run, pidfile)
            )
            logger.info(
                "runner started for session %s (backend %s, pid %s)",
                session_id, self.backend.name, handle.pid,
            )  # fmt: skip
            self.on_started(session_id)
            return True
        except Exception:
            logger.exception("runner spawn failed for session %s; the sweep will retry", session_id)
            return False
        finally:
            self._spawning.pop(session_id, None)

    async def _watch(self, session_id: str, run: _Running, pidfile: Path) -> None:
        code = await run.handle.wait()
        self.running.pop(session_id, None)
        with contextlib.suppress(OSError):
            pidfile.unlink()
        logger.info(
            "runner for session %s exited (code %s, reason %s)",
            session_id, code, run.stop_reason or "own",
        )  # fmt: skip
        try:
            self.on_exit(
                session_id, RunnerExit(code, run.stop_reason, run.count_try, run.started_at)
            )
        except Exception:
            logger.exception("exit handling failed for session %s", session_id)
        self._next_from_queue()

    def make_room(self) -> int:
        """With work queued and the cap reached, stop idle runners (longest idle first), one
        per queued session not already covered by a runner on its way out. Returns how many
        were asked to stop. Call it when work is queued and when a runner may have become
        idle; an idle runner never holds a slot that queued work is waiting for."""
        want = len(self._queue) - len(self._yielding)
        if want <= 0 or self._closed:
            return 0
        idle: list[tuple[datetime, str]] = []
        for sid, run in self.running.items():
            if sid in self._yielding or run.stop_reason is not None:
                continue
            try:
                since = self.idle_since(sid)
            except Exception:
                logger.exception("idle check of session %s failed", sid)
                continue
            if since is not None:
                idle.append((since, sid))
        idle.sort()
        loop = asyncio.get_running_loop()
        for _, sid in idle[:want]:
            logger.info("session %s: idle runner yields its slot to queued work", sid)
            self._yielding.add(sid)
            task = loop.create_task(self.stop(sid, "yield"), name=f"yield-{sid}")
            task.add_done_callback(functools.partial(self._yielded, sid))
        return min(want, len(idle))

    def _yielded(self, session_id: str, _task: asyncio.Task[bool]) -> None:
        self._yielding.discard(session_id)

    def _next_from_queue(self) -> None:
        while self._queue and not self._closed:
            if len(self.running) + len(self._spawning) >= self.max_runners:
                return
            self.wake(self._queue.popleft())

    async def stop(self, session_id: str, reason: str, *, count_try: bool = False) -> bool:
        """SIGTERM the runner's group, SIGKILL after the grace period; waits for the exit."""
        if session_id in self._queue:
            self._queue.remove(session_id)
        spawning = self._spawning.get(session_id)
        if spawning is not None:
            await spawning
        run = self.running.get(session_id)
        if run is None:
            return False
        run.stop_reason = run.stop_reason or reason
        run.count_try = run.count_try or count_try
        run.handle.signal(signal.SIGTERM)
        waiter = run.waiter
        if waiter is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.grace_s)
        except TimeoutError:
            run.handle.signal(signal.SIGKILL)
            await waiter
        return True

    async def stop_all(self, reason: str = "shutdown") -> None:
        self._closed = True
        self._queue.clear()
        ids = {*self.running, *self._spawning}  # a spawn in flight is awaited, then stopped
        await asyncio.gather(*(self.stop(sid, reason) for sid in ids))


def cleanup_orphans(sessions_dir: Path, grace_s: float = 1.0) -> int:
    """Stop runners recorded in ``.runner.pid`` files whose process still lives (blocking;
    call it through ``asyncio.to_thread``). Returns how many were stopped."""
    stopped = 0
    for pidfile in sessions_dir.glob(f"*/*/{PID_FILE}"):
        try:
            pid_s, _, start = pidfile.read_text().strip().partition(" ")
            pid = int(pid_s)
        except (OSError, ValueError):
            continue
        if proc_start_time(pid) is not None and proc_start_time(pid) == (start or None):
            logger.warning("stopping orphan runner pid %d (%s)", pid, pidfile.parent.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and proc_start_time(pid) is not None:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            stopped += 1
        with contextlib.suppress(OSError):
            pidfile.unlink()
    return stopped


@dataclass
class FakeHandle:
    pid: int | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    code: int = 0
    signals: list[int] = field(default_factory=list)

    async def wait(self) -> int:
        await self._done.wait()
        return self.code

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.exit(-sig)

    def exit(self, code: int = 0) -> None:
        self.code = code
        self._done.set()


@dataclass
class FakeBackend:
    """Records wakes; runs nothing (spec/nanoclaw-tests.md seam S3)."""

    name: str = "fake"
    fail: bool = False
    started: list[RunnerSpec] = field(default_factory=list)
    handles: dict[str, FakeHandle] = field(default_factory=dict)

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        if self.fail:
            raise OSError("fake backend: spawn refused")
        self.started.append(spec)
        handle = FakeHandle()
        self.handles[spec.session_id] = handle
        return handle
