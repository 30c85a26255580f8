"""The channel adapter protocol and the inbound event shape (spec/host.md §3.1, DESIGN §6).

An adapter turns a chat platform into inbound events (through the callbacks it is given in
``start``) and delivers outbound messages. ``deliver`` returns the platform's message id
(or None) and raises:

* ``ChannelUnavailable`` — nobody is there to receive it right now (e.g. no CLI client
  connected). The host keeps the row undelivered and retries later; never "delivered".
* ``DeliveryError`` — the send failed (retried with backoff, then ``failed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from carapace.errors import DeliveryError


class ChannelUnavailable(DeliveryError):
    """No reader is connected for this address; try again later (does not use up tries)."""

    code = "channel-unavailable"


@dataclass(frozen=True)
class InboundMessage:
    id: str
    kind: str
    content: str  # JSON text, as NanoClaw stores it
    timestamp: str
    is_mention: bool | None = None
    is_group: bool | None = None


@dataclass(frozen=True)
class Address:
    channel_type: str
    platform_id: str
    thread_id: str | None = None


@dataclass(frozen=True)
class InboundEvent:
    """NanoClaw's ``InboundEvent``; ``to_json`` gives its exact JSON shape."""

    channel_type: str
    platform_id: str
    thread_id: str | None
    message: InboundMessage
    reply_to: Address | None = None

    def to_json(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "id": self.message.id,
            "kind": self.message.kind,
            "content": self.message.content,
            "timestamp": self.message.timestamp,
        }
        if self.message.is_mention is not None:
            msg["isMention"] = self.message.is_mention
        if self.message.is_group is not None:
            msg["isGroup"] = self.message.is_group
        out: dict[str, Any] = {
            "channelType": self.channel_type,
            "platformId": self.platform_id,
            "threadId": self.thread_id,
            "message": msg,
        }
        if self.reply_to is not None:
            out["replyTo"] = {
                "channelType": self.reply_to.channel_type,
                "platformId": self.reply_to.platform_id,
                "threadId": self.reply_to.thread_id,
            }
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InboundEvent:
        m = data["message"]
        content = m.get("content", "")
        rt = data.get("replyTo")
        return cls(
            channel_type=str(data["channelType"]),
            platform_id=str(data["platformId"]),
            thread_id=data.get("threadId"),
            message=InboundMessage(
                id=str(m.get("id") or ""),
                kind=str(m.get("kind") or "chat"),
                content=content if isinstance(content, str) else _dumps(content),
                timestamp=str(m.get("timestamp") or ""),
                is_mention=m.get("isMention"),
                is_group=m.get("isGroup"),
            ),
            reply_to=None
            if not rt
            else Address(str(rt["channelType"]), str(rt["platformId"]), rt.get("threadId")),
        )


def _dumps(value: Any) -> str:
    from carapace.jsonutil import dumps

    return dumps(value)


@dataclass(frozen=True)
class OutboundFile:
    name: str
    data: bytes


@dataclass(frozen=True)
class OutboundMessage:
    """What an adapter is asked to send: NanoClaw's ``{kind, content, files}``.

    * ``key`` — the row's idempotency key: 32 hex digits derived from the session and the
      row id, the same on every attempt (also after a host restart). An adapter whose
      platform deduplicates sends (a nonce, a client message id) passes it there.
    * ``resend`` — the host recorded that it was about to send this row and then crashed
      before it recorded the outcome: the platform may already show it. An adapter that can
      look it up on the platform (by ``key``) should, and skip the send if it is there.
    * ``answers`` — every inbound message id the reply answers (a batch of messages from
      several senders gets one reply); ``in_reply_to`` is only the batch's first.
    """

    kind: str
    content: Any
    files: tuple[OutboundFile, ...] = ()
    message_out_id: str | None = None
    in_reply_to: str | None = None
    key: str | None = None
    resend: bool = False
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ButtonClick:
    """A person pressed a card's button (``ncq:<questionId>:<index>``, spec §6.8).
    ``user_id`` is the platform's raw id; the host namespaces it with ``channel_type``."""

    channel_type: str
    question_id: str
    value: str
    user_id: str
    platform_id: str | None = None
    thread_id: str | None = None


@dataclass(frozen=True)
class ClickAnswer:
    """What the approvals engine made of a click: shown to the clicker (e.g. a toast)."""

    status: str
    message: str
    applied: bool


async def _no_action(click: ButtonClick) -> ClickAnswer:
    return ClickAnswer("gone", "nobody handles buttons here", False)


@dataclass
class ChannelCallbacks:
    """Given to ``start``: inbound events go to ``on_inbound`` (the router; it returns once
    the event's rows are committed, so an adapter may acknowledge the platform then),
    button clicks to ``on_action`` (the single approvals entry point), and an adapter that
    stops working on its own (e.g. its token was revoked) says so once with ``on_status``
    (``channel_type``, ``state``, one-line ``detail``)."""

    on_inbound: Callable[[InboundEvent], Awaitable[Any]]
    on_ready: Callable[[str], None] = field(default=lambda channel_type: None)
    on_action: Callable[[ButtonClick], Awaitable[ClickAnswer]] = field(default=_no_action)
    on_status: Callable[[str, str, str | None], None] = field(
        default=lambda channel_type, state, detail: None
    )


@runtime_checkable
class ChannelAdapter(Protocol):
    """What the host needs of a channel. Optional attributes, read with ``getattr``:
    ``dedupes_sends`` (true when a re-send with the same ``OutboundMessage.key`` shows
    nothing twice on the platform — the host then lets such sends run concurrently; without
    it sends take turns host-wide, see ``host/delivery.py``), ``edit``, ``react``."""

    channel_type: str
    supports_threads: bool

    async def start(self, callbacks: ChannelCallbacks) -> None: ...

    async def stop(self) -> None: ...

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None: ...


_T = TypeVar("_T")
LONG_TEXT = 16 * 1024  # characters: formatting and splitting more may take milliseconds


async def off_loop_if_long(text: str, fn: Callable[[str], _T]) -> _T:
    """``fn(text)`` (a channel's formatting and splitting of a reply), in a worker thread
    when ``text`` is long: an agent's reply may hold megabytes (4 MiB: 0.3-0.4 s to format
    and split for Slack or Discord), which on the event loop would hold up every chat; a
    short one stays on the loop (a thread hop costs a round trip ~0.1 ms)."""
    if len(text) <= LONG_TEXT:
        return fn(text)
    return await asyncio.to_thread(fn, text)


FORMAT_SLICE = 8 * 1024  # characters of one line a channel's inline formatting takes at once


def line_slices(line: str, size: int = FORMAT_SLICE) -> list[str]:
    """``line`` in slices of at most about ``size`` characters, cut after a space where one
    is near: a regular expression runs in C holding the GIL, so one over a line of
    megabytes held up the event loop from any thread (markup across a cut is left as
    written: only a line longer than ``size`` has one)."""
    if len(line) <= size:
        return [line]
    out: list[str] = []
    pos = 0
    while len(line) - pos > size:
        cut = line.rfind(" ", pos + size // 2, pos + size)
        cut = cut + 1 if cut != -1 else pos + size
        out.append(line[pos:cut])
        pos = cut
    out.append(line[pos:])
    return out
