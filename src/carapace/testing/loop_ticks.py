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


class LongestGap(LoopTicks):
    """The longest time between two wake-ups of a task that asks to wake every
    ``interval`` seconds, from entering the ``async with`` block to leaving it: how long
    the event loop was held by a call that did not give it back.

    ::

        async with LongestGap() as gap:
            await something_that_must_not_block_the_loop()
        assert gap.longest < 0.4
    """

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(interval)
        self.longest = 0.0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.longest = max(self.longest, now - last)
            last = now
            self.count += 1
