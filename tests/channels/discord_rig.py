"""A Discord adapter wired to the fake Discord with recording callbacks (adapter tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from carapace.channels.base import ButtonClick, ChannelCallbacks, ClickAnswer, InboundEvent
from carapace.channels.discord_adapter import DiscordChannel
from carapace.testing.fake_discord import FakeDiscord

TIMEOUT = 20.0


@dataclass
class Recorded:
    events: list[InboundEvent] = field(default_factory=list)
    clicks: list[ButtonClick] = field(default_factory=list)
    statuses: list[tuple[str, str, str | None]] = field(default_factory=list)
    answer: ClickAnswer = field(default_factory=lambda: ClickAnswer("approved", "ok", True))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_inbound(self, event: InboundEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def on_action(self, click: ButtonClick) -> ClickAnswer:
        self.clicks.append(click)
        self.changed.set()
        return self.answer

    def on_status(self, channel_type: str, state: str, detail: str | None) -> None:
        self.statuses.append((channel_type, state, detail))
        self.changed.set()

    def callbacks(self) -> ChannelCallbacks:
        return ChannelCallbacks(on_inbound=self.on_inbound, on_action=self.on_action,
                                on_status=self.on_status)  # fmt: skip

    async def wait(self, predicate: Any, timeout: float = TIMEOUT) -> Any:
        async def _wait() -> Any:
            while not (value := predicate()):
                self.changed.clear()
                await self.changed.wait()
            return value

        return await asyncio.wait_for(_wait(), timeout)

    async def next_event(self, n: int) -> InboundEvent:
        """The ``n``-th event (1-based), once it has arrived."""
        await self.wait(lambda: len(self.events) >= n)
        return self.events[n - 1]


def content(event: InboundEvent) -> dict[str, Any]:
    doc = json.loads(event.message.content)
    assert isinstance(doc, dict)
    return doc


@asynccontextmanager
async def discord_rig(
    **fake_kw: Any,
) -> AsyncIterator[tuple[FakeDiscord, DiscordChannel, Recorded]]:
    fake = await FakeDiscord(**fake_kw).start()
    rec = Recorded()
    adapter = DiscordChannel(
        fake.token, base_url=fake.base_url, max_file_bytes=1024, guild_ready_timeout=0.05
    )
    try:
        await adapter.start(rec.callbacks())
        await asyncio.wait_for(adapter.ready.wait(), TIMEOUT)
        yield fake, adapter, rec
    finally:
        await adapter.stop()
        await fake.stop()
