"""Helpers for the Slack adapter tests: a fake Slack, the adapter wired to it, and a
recording set of callbacks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from carapace.channels.base import ButtonClick, ChannelCallbacks, ClickAnswer, InboundEvent
from carapace.channels.slack_adapter import SlackChannel
from carapace.testing.fake_slack import FakeSlack


@dataclass
class Recorder:
    events: list[InboundEvent] = field(default_factory=list)
    actions: list[tuple[Any, ...]] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    statuses: list[tuple[str, str, str | None]] = field(default_factory=list)
    fail: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_inbound(self, event: InboundEvent) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("router down")
        self.events.append(event)
        self.changed.set()

    async def on_action(self, click: ButtonClick) -> ClickAnswer:
        self.actions.append(click)
        self.changed.set()
        return ClickAnswer("approved", "ok", True)

    def on_status(self, channel_type: str, state: str, detail: str | None) -> None:
        self.statuses.append((channel_type, state, detail))

    def callbacks(self) -> ChannelCallbacks:
        return ChannelCallbacks(on_inbound=self.on_inbound, on_ready=self.ready.append,
                                on_action=self.on_action, on_status=self.on_status)  # fmt: skip


@contextlib.asynccontextmanager
async def slack_world(**adapter_kw: Any) -> AsyncIterator[tuple[FakeSlack, SlackChannel, Recorder]]:
    slack = FakeSlack()
    await slack.start()
    slack.add_user("U1", "Ann")
    slack.add_user("U2", "Bob")
    slack.add_channel("C1", "channel")
    adapter_kw.setdefault("ping_interval", 0.5)
    adapter = SlackChannel(slack.bot_token, slack.app_token, base_url=slack.api_url, **adapter_kw)
    rec = Recorder()
    try:
        await adapter.start(rec.callbacks())
        yield slack, adapter, rec
    finally:
        await adapter.stop()
        await slack.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))
