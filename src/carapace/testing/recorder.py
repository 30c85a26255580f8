"""A recording channel for tests: the local CLI channel type, every delivery kept.

``got`` is a queue to await replies on; ``all`` and ``to`` (platform id, message) keep the
whole history. Nothing is sent anywhere."""

from __future__ import annotations

import asyncio

from carapace.bootstrap import CLI_CHANNEL
from carapace.channels.base import ChannelCallbacks, OutboundMessage


class Recorder:
    """The local CLI channel, recording every delivered message."""

    channel_type = CLI_CHANNEL
    supports_threads = False

    def __init__(self) -> None:
        self.got: asyncio.Queue[OutboundMessage] = asyncio.Queue()
        self.all: list[OutboundMessage] = []
        self.to: list[tuple[str, OutboundMessage]] = []  # (platform id, message)

    async def start(self, callbacks: ChannelCallbacks) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        self.all.append(message)
        self.to.append((platform_id, message))
        self.got.put_nowait(message)
        return message.message_out_id
