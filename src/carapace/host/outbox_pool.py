"""The pool every ``outbound.db`` read of the host runs on (``host/outbox_reader.py``
holds the reads): off the event loop, a few threads shared by every session, each call
bounded in time; a read that meets a lock gives its worker back between tries, so an
agent keeping its file locked holds up no other session's delivery. Refusals are told to
the agent once per session and reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from carapace.host.outbox_reader import BUSY_WAIT_MS, OutboxBusy, OutboxRefused, in_pool

if TYPE_CHECKING:
    from carapace.db.sessions import Session
    from carapace.host.sessions import SessionManager

logger = logging.getLogger("carapace.host.outbox_reader")

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0  # an awaited read gives up after this (the budget fires first)
BUSY_PAUSE_S = 0.005  # between a pool read's tries, doubling up to
BUSY_PAUSE_MAX_S = 0.05


class OutboxReader:
    """Runs outbound.db reads on a small thread pool, off the event loop, with a timeout.

    A refusal is logged once per session and file state (not on every read)."""

    def __init__(self, workers: int = 4, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox",
                                        initializer=in_pool)  # fmt: skip
        self.timeout_s = timeout_s
        self._told: dict[str, str] = {}

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the pool. A read that met a lock (:class:`OutboxBusy`, after
        ``BUSY_TRY_MS`` in its thread) is tried again after a pause with the worker given
        back, for up to ``BUSY_WAIT_MS`` in all: one agent keeping its file locked holds
        up no other session's reads."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout_s):  # (wait_for ran one more task: ~50 µs)
            deadline = loop.time() + BUSY_WAIT_MS / 1000
            pause = BUSY_PAUSE_S
            while True:
                try:
                    return await loop.run_in_executor(self._pool, fn, *args)
                except OutboxBusy:
                    if loop.time() + pause > deadline:
                        raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, BUSY_PAUSE_MAX_S)

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
        self._pool.shutdown(wait=False, cancel_futures=True)
