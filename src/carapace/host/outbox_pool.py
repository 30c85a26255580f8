"""The pool every ``outbound.db`` read of the host runs on (``host/outbox_reader.py``
holds the reads): off the event loop, a few threads shared by every session, each call
bounded in time; a read that meets a lock gives its worker back between tries, so an
agent keeping its file locked holds up no other session's delivery. Refusals are told to
the agent once per session and reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from carapace.host.outbox_reader import BUSY_WAIT_MS, OutboxBusy, OutboxRefused, in_pool
from carapace.host.thread_answer import answer

if TYPE_CHECKING:
    from carapace.db.sessions import Session
    from carapace.host.sessions import SessionManager

logger = logging.getLogger("carapace.host.outbox_reader")

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0  # an awaited read gives up after this (the budget fires first)
BUSY_PAUSE_S = 0.005  # between a pool read's tries, doubling up to
BUSY_PAUSE_MAX_S = 0.05


# a job: (function, its arguments, the loop and the future that hear its outcome)
_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class _Workers:
    """A few daemon threads taking jobs from one queue, started as the load needs them.

    Not a ``ThreadPoolExecutor``: a delivery's read is on every reply's critical path, and
    the executor's round trip (its futures, ``wrap_future``, the idle semaphore) measured
    110-190 µs here against ~40 µs for a queue and ``call_soon_threadsafe``
    (docs/benchmarks.md, *A leaner hop to the outbox readers*)."""

    def __init__(self, most: int) -> None:
        self._most = max(1, most)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0  # threads waiting for a job
        self._closed = False

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the outbox readers are closed")
            if self._idle > 0:
                self._idle -= 1  # a waiting thread takes it
            elif self._started < self._most:
                self._started += 1
                threading.Thread(target=self._run, name=f"outbox-{self._started}",
                                 daemon=True).start()  # fmt: skip
            # else: every thread is busy, the job waits for the first one done
        self._jobs.put(job)

    def _run(self) -> None:
        in_pool()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, loop, fut = job
            try:
                ok, value = True, fn(*args)
            except BaseException as exc:  # the caller's: raised where it awaits
                ok, value = False, exc
            del job, fn, args  # (nothing of the job is kept while the thread waits)
            answer(loop, fut, ok, value)
            del loop, fut, value
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """The threads end after their current job; jobs not started are cancelled."""
        with self._lock:
            self._closed = True
            started = self._started
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                with contextlib.suppress(RuntimeError):
                    job[2].call_soon_threadsafe(job[3].cancel)
        for _ in range(started):
            self._jobs.put(None)


class OutboxReader:
    """Runs outbound.db reads on a few threads, off the event loop, with a timeout.

    A refusal is logged once per session and file state (not on every read)."""

    def __init__(self, workers: int = 4, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._pool = _Workers(workers)
        self.timeout_s = timeout_s
        self._told: dict[str, str] = {}

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the pool. A read that met a lock (:class:`OutboxBusy`, after
        ``BUSY_TRY_MS`` in its thread) is tried again after a pause with the worker given
        back, for up to ``BUSY_WAIT_MS`` in all: one agent keeping its file locked holds
        up no other session's reads."""
        loop = asyncio.get_running_loop()
        # handed over first: the thread wakes while the timeout is set up (every reply's
        # read waits for that wake-up, ~0.05-0.08 ms here)
        fut: asyncio.Future[T] = loop.create_future()
        self._pool.submit((fn, args, loop, fut))
        async with asyncio.timeout(self.timeout_s):  # (wait_for ran one more task: ~50 µs)
            deadline = loop.time() + BUSY_WAIT_MS / 1000
            pause = BUSY_PAUSE_S
            while True:
                try:
                    return await fut
                except OutboxBusy:
                    if loop.time() + pause > deadline:
                        raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, BUSY_PAUSE_MAX_S)
                fut = loop.create_future()
                self._pool.submit((fn, args, loop, fut))

    def first_refusal(self, key: str, why: str) -> bool:
        """True the first time ``why`` is reported for ``key`` (a session id)."""
        if self._told.get(key) == why:
            return False
        self._told[key] = why
        return True

    def accepted(self, key: str) -> None:
        self._told.pop(key, None)

    def refused(self, sessions: SessionManager, session: Session, exc: OutboxRefused,
                now: datetime, wake: Callable[[str], None]) -> None:  # fmt: skip
        """Log the refusal and tell the agent, once per session and reason."""
        why = str(exc)
        if not self.first_refusal(session.id, why):
            return
        if isinstance(exc, OutboxBusy):  # a lock held too long: nothing wrong with the file
            logger.warning("session %s: outbound.db stayed locked, not read this time: %s",
                           session.id, why)  # fmt: skip
            note = (f"The host could not read your outbound.db: it stayed locked for over "
                    f"{BUSY_WAIT_MS / 1000:g} s ({why}). What you wrote is delivered once the "
                    "lock goes; do not keep a transaction open on that file.")  # fmt: skip
        else:
            logger.error("session %s: outbound.db refused, nothing from it is read: %s",
                         session.id, why)  # fmt: skip
            note = (
                f"The host refused your outbound.db ({why}). Nothing you send is "
                "delivered until it has exactly the runner's schema again."
            )
        sessions.notify_agent(session, note, now=now)
        wake(session.id)

    def close(self) -> None:
        self._pool.close()
