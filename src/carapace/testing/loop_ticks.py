"""Counting an event loop's turns while a test waits: a loop blocked in a call counts none.

::

    async with LoopTicks(0.005) as ticks:
        await something_that_must_not_block_the_loop()
    assert ticks.count >= 3
"""

from __future__ import annotations

import asyncio
import contextlib


class LoopTicks:
    """A task that wakes every ``interval`` seconds and counts its wake-ups, from entering
    the ``async with`` block to leaving it."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.count += 1

    async def __aenter__(self) -> LoopTicks:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
