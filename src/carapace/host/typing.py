"""Typing indicators kept alive while an agent works on a chat (spec/host.md §3.11).

``start`` (a message woke the session): "typing…" at once on the message's chat, then
every ``REFRESH_S`` while within ``GRACE_S`` of the start or while the runner's heartbeat
is fresher than ``HEARTBEAT_FRESH_S``. ``stop`` when a reply was delivered to the session's
chat or the runner exited (the turn ended or failed). Started again for the same session,
it fires once for the new chat and restarts the grace. Errors of an adapter's
``set_typing`` are swallowed (it is best effort). Only adapters that have ``set_typing``
take part.

Deviation: NanoClaw pauses typing for 10 s after a delivered message and resumes it; here
a delivered reply stops it (the next message starts it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

logger = logging.getLogger(__name__)

REFRESH_S = 4.0
GRACE_S = 15.0
HEARTBEAT_FRESH_S = 6.0


@dataclass
class _Typing:
    target: tuple[str, str, str | None]
    started: float
    task: asyncio.Task[None] | None = None


class TypingKeeper:
    def __init__(self, adapters: Mapping[str, Any],
                 heartbeat: Callable[[str], datetime | None],
                 now: Callable[[], datetime]) -> None:  # fmt: skip
        self.adapters = adapters
        self.heartbeat = heartbeat
        self.now = now
        self.active: dict[str, _Typing] = {}
        self._once: set[asyncio.Task[None]] = set()

    async def _fire(self, target: tuple[str, str, str | None]) -> None:
        adapter = self.adapters.get(target[0])
        fn = getattr(adapter, "set_typing", None)
        if fn is None:
            return
        try:
            await fn(target[1], target[2])
        except Exception as exc:
            logger.debug("typing on %s:%s failed: %s", target[0], target[1], exc)

    def start(self, session_id: str, channel_type: str, platform_id: str,
              thread_id: str | None) -> None:  # fmt: skip
        if getattr(self.adapters.get(channel_type), "set_typing", None) is None:
            return
        loop = asyncio.get_running_loop()
        target = (channel_type, platform_id, thread_id)
        cur = self.active.get(session_id)
        if cur is not None and cur.task is not None and not cur.task.done():
            cur.started = loop.time()
            once = loop.create_task(self._fire(target))
            self._once.add(once)
            once.add_done_callback(self._once.discard)
            return
        state = _Typing(target, loop.time())
        state.task = loop.create_task(self._run(session_id, state))
        self.active[session_id] = state

    async def _run(self, session_id: str, state: _Typing) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._fire(state.target)
                await asyncio.sleep(REFRESH_S)
                if loop.time() - state.started <= GRACE_S:
                    continue
                beat = self.heartbeat(session_id)
                if beat is None or (self.now() - beat).total_seconds() > HEARTBEAT_FRESH_S:
                    return
        finally:
            if self.active.get(session_id) is state:
                del self.active[session_id]

    def stop(self, session_id: str) -> None:
        state = self.active.pop(session_id, None)
        if state is not None and state.task is not None:
            state.task.cancel()

    async def stop_all(self) -> None:
        tasks = [s.task for s in self.active.values() if s.task is not None]
        tasks.extend(self._once)
        self.active.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
