"""The runner pool: one runner process per active session, started through a backend.

* ``RunnerBackend`` is the seam for sandboxes (``subprocess`` now; ``bwrap``/``docker``
  later slot in by implementing ``start``). The pool never looks inside a handle beyond
  ``pid``, ``wait`` and ``signal``.
* A cap (``max_runners``) with a FIFO queue; spawning is awaited, never done inline.
* Start admission (``max_starting``): at most that many runners are being started (prepared
  and launched) at once; the rest of the sessions holding a slot wait in FIFO order, so a
  burst of wakes (a restart with many sessions due, a busy minute over many chats) does
  not put every spawn's file work, fork and sandbox set-up on the machine at once. A
  launched runner keeps its place until it is up (its first commit: ``runner_ready``; at
  most ``SETTLE_S``): a runner's start-up is ~60 ms of CPU (imports), and 100 of them at
  once left the host's event loop ~1/100 of the CPU (``sched_autogroup`` weighs each
  runner's session as much as the whole host), stalling every chat for ~90 ms.
* Each session dir gets ``.runner.pid`` (``<pid> <start time>``) so orphans left by a
  crashed host are reaped at the next start (spec §5.10, §7.8 item 3).
* ``stop`` sends SIGTERM to the runner's process group, then SIGKILL after the grace.
* Exits are reported to ``on_exit(session_id, RunnerExit)``; the host decides there
  whether the exit costs the claimed messages a try (spec §11.1 item 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from carapace.errors import no_space
from carapace.sandbox.process import (
    PID_FILE,
    RunnerBackend,
    RunnerExit,
    RunnerHandle,
    RunnerSpec,
    proc_start_time,
)

logger = logging.getLogger(__name__)

# A runner yields its slot to queued work once it has been idle this long: a runner whose
# chat is between two messages of a busy conversation keeps its slot (stopping it would
# cost a spawn a moment later, and under a full cap every such stop starts a cascade of
# them), while queued work still gets a slot within a second of a runner going idle.
YIELD_MIN_IDLE_S = 0.5


SETTLE_S = 1.0  # a launched runner counts as starting until its first commit, at most this


def default_max_starting() -> int:
    """Runners starting at once by default (launched and not up yet): one per CPU. A
    start-up is CPU work; more at once only takes the CPU from the host (`bench
    concurrent`, 2 CPUs: 3 at once 24-40 ms loop stalls, 2 at once 17-32 ms and the 100
    chats answered sooner, 12.5 s against 13.4-13.9 s)."""
    return os.cpu_count() or 1


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
        prepare: Callable[[str], RunnerSpec | Awaitable[RunnerSpec | None] | None],
        on_exit: Callable[[str, RunnerExit], None],
        on_started: Callable[[str], None] = lambda sid: None,
        now: Callable[[], datetime],
        grace_s: float = 1.0,
        idle_since: Callable[[str], datetime | None] = lambda sid: None,
        yield_min_idle_s: float = YIELD_MIN_IDLE_S,
        max_starting: int | None = None,
    ) -> None:
        self.backend = backend
        # ``idle_since(sid)``: when the session's runner last had work, or None while it has
        # some. With the cap reached and work queued, the longest-idle runner yields its slot.
        self.idle_since = idle_since
        self._yielding: set[str] = set()
        self.yield_min_idle_s = yield_min_idle_s
        self._room_timer: asyncio.TimerHandle | None = None
        self.max_runners = max(1, max_runners)
        # sessions holding a slot whose runner is being prepared or launched: at most
        # ``max_starting`` at once, the others wait (FIFO) without holding up the loop
        # (asyncio.Semaphore lets waiters in in arrival order, as the router's admission)
        self._start_gate = asyncio.Semaphore(max(1, max_starting or default_max_starting()))
        self._starting = 0
        # launched runners not up yet (they keep their place in the gate): when it is freed
        self._settling: dict[str, asyncio.TimerHandle] = {}
        self._unwanted: set[str] = set()  # stopped while waiting to start: not started
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

    def starting(self) -> int:
        """How many runners are being prepared or launched right now."""
        return self._starting

    def runner_ready(self, session_id: str) -> None:
        """The session's runner is up (it committed): its place in the start gate is free."""
        timer = self._settling.pop(session_id, None)
        if timer is not None:
            timer.cancel()
            self._start_gate.release()

    def settling(self) -> int:
        """Launched runners not up yet (their place in the start gate still taken)."""
        return len(self._settling)

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
            await self._start_gate.acquire()
        except asyncio.CancelledError:
            self._unwanted.discard(session_id)
            self._spawning.pop(session_id, None)
            raise
        started = False
        self._starting += 1
        try:
            if self._closed or session_id in self._unwanted:
                return False
            prepared = self.prepare(session_id)
            spec = await prepared if inspect.isawaitable(prepared) else prepared
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
            started = True
            # its place in the gate is kept until it is up (runner_ready) or SETTLE_S
            self._settling[session_id] = asyncio.get_running_loop().call_later(
                SETTLE_S, self.runner_ready, session_id
            )
            return True
        except Exception as exc:
            if no_space(exc):  # one line: it recurs until there is room again
                logger.error("runner spawn failed for session %s (no space left: %s); the "
                             "sweep will retry", session_id, exc)  # fmt: skip
            else:
                logger.exception("runner spawn failed for session %s; the sweep will retry",
                                 session_id)  # fmt: skip
            return False
        finally:
            self._starting -= 1
            if session_id not in self._settling:
                self._start_gate.release()
            self._unwanted.discard(session_id)
            self._spawning.pop(session_id, None)
            if not started:  # the slot is free again: queued work may take it
                self._next_from_queue()

    async def _watch(self, session_id: str, run: _Running, pidfile: Path) -> None:
        code = await run.handle.wait()
        self.runner_ready(session_id)  # an exit before its first commit frees its place too
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
        idle; an idle runner never holds a slot that queued work is waiting for longer than
        ``yield_min_idle_s`` (a runner idle for less is looked at again when it is due)."""
        want = len(self._queue) - len(self._yielding)
        if want <= 0 or self._closed:
            return 0
        now = self.now()
        fresh: list[float] = []  # seconds until a runner idle for less becomes a candidate
        idle: list[tuple[datetime, str]] = []
        for sid, run in self.running.items():
            if sid in self._yielding or run.stop_reason is not None:
                continue
            try:
                since = self.idle_since(sid)
            except Exception:
                logger.exception("idle check of session %s failed", sid)
                continue
            if since is None:
                continue
            left = self.yield_min_idle_s - (now - since).total_seconds()
            if left > 0:
                fresh.append(left)
            else:
                idle.append((since, sid))
        idle.sort()
        loop = asyncio.get_running_loop()
        if len(idle) < want and fresh and self._room_timer is None:
            self._room_timer = loop.call_later(min(fresh) + 0.01, self._room_due)
        for _, sid in idle[:want]:
            logger.info("session %s: idle runner yields its slot to queued work", sid)
            self._yielding.add(sid)
            task = loop.create_task(self.stop(sid, "yield"), name=f"yield-{sid}")
            task.add_done_callback(functools.partial(self._yielded, sid))
        return min(want, len(idle))

    def _room_due(self) -> None:
        self._room_timer = None
        if self._queue:
            self.make_room()

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
            self._unwanted.add(session_id)  # still waiting to start: it is not started
            await spawning
        run = self.running.get(session_id)
        if run is None:
            return False
        run.stop_reason = run.stop_reason or reason
        run.count_try = run.count_try or count_try
        await _signal(run.handle, signal.SIGTERM)
        waiter = run.waiter
        if waiter is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.grace_s)
        except TimeoutError:
            await _signal(run.handle, signal.SIGKILL)
            await waiter
        return True

    async def stop_all(self, reason: str = "shutdown") -> None:
        self._closed = True
        self._queue.clear()
        if self._room_timer is not None:
            self._room_timer.cancel()
            self._room_timer = None
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


async def _signal(handle: RunnerHandle, sig: int) -> None:
    """A handle whose ``signal`` walks ``/proc`` (bwrap: ~7 ms) is signalled off the loop."""
    if getattr(handle, "signal_blocks", False):
        await asyncio.to_thread(handle.signal, sig)
    else:
        handle.signal(sig)


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
