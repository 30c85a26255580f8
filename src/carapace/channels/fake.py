"""A recording fake channel adapter for tests (spec/nanoclaw-tests.md §6, seam S2)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from carapace.channels.base import (
    ChannelCallbacks,
    ChannelUnavailable,
    InboundEvent,
    InboundMessage,
    OutboundMessage,
)
from carapace.errors import DeliveryError
from carapace.jsonutil import dumps
from carapace.timefmt import iso


@dataclass
class Delivery:
    channel_type: str
    platform_id: str
    thread_id: str | None
    kind: str
    content: Any
    files: list[tuple[str, bytes]]
    message_out_id: str | None = None


@dataclass
class FakeChannel:
    """Records every call. ``fail_next`` failures are raised before successes;
    ``unavailable`` makes every delivery raise ``ChannelUnavailable``."""

    channel_type: str = "fake"
    supports_threads: bool = False
    fail_next: int = 0
    fail_always: bool = False
    unavailable: bool = False
    streams_replies: bool = False  # show replies as they are written (host/preview.py)
    edit_chars: int = 2000
    deliveries: list[Delivery] = field(default_factory=list)
    edits: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    reactions: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    typing: list[tuple[str, str | None]] = field(default_factory=list)
    calls: int = 0
    callbacks: ChannelCallbacks | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def start(self, callbacks: ChannelCallbacks) -> None:
        self.callbacks = callbacks

    async def stop(self) -> None:
        self.callbacks = None

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.unavailable:
            raise ChannelUnavailable("fake channel: no reader")
        if self.fail_always:
            raise DeliveryError("fake channel: always failing")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise DeliveryError("fake channel: failing once")

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        self._maybe_fail()
        self.deliveries.append(
            Delivery(
                self.channel_type, platform_id, thread_id, message.kind, message.content,
                [(f.name, f.data) for f in message.files], message.message_out_id,
            )
        )  # fmt: skip
        return f"{self.channel_type}-pm-{next(self._ids)}"

    async def edit(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        self._maybe_fail()
        self.edits.append((platform_id, thread_id, message_id, text))

    async def react(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        self._maybe_fail()
        self.reactions.append((platform_id, thread_id, message_id, emoji))

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        self.typing.append((platform_id, thread_id))

    def texts(self) -> list[str]:
        return [
            str(d.content.get("text")) if isinstance(d.content, dict) else str(d.content)
            for d in self.deliveries
        ]


def make_event(
    text: str,
    *,
    channel_type: str = "fake",
    platform_id: str = "chat-1",
    thread_id: str | None = None,
    id: str | None = None,
    sender: str | None = "User",
    sender_id: str | None = "u1",
    is_mention: bool | None = None,
    is_group: bool | None = None,
    kind: str = "chat",
    extra: dict[str, Any] | None = None,
) -> InboundEvent:
    """An inbound event as a channel would hand it to the router."""
    content: dict[str, Any] = {"text": text}
    if sender is not None:
        content["sender"] = sender
    if sender_id is not None:
        content["senderId"] = sender_id
    content.update(extra or {})
    return InboundEvent(
        channel_type, platform_id, thread_id,
        InboundMessage(id or f"m-{next(_event_ids)}", kind, dumps(content), iso(), is_mention,
                       is_group),
    )  # fmt: skip


_event_ids = itertools.count(1)
