"""The web chat channel (``web``): a person in a browser talking to agent groups.

Addresses (``platform_id``): ``<name>/<agent group id>`` is the chat of the web user
``web:<name>`` with one agent group (a DM: ``is_group`` false, policy ``strict``, so the
router's access gate applies to every message); ``<name>`` alone is that user's inbox, where
cards for them as an approver land (the host reaches an approver at the handle itself).

``deliver`` stores the message (and its files) in ``data/web.db`` before it returns, then
pushes it to the user's open pages (server-sent events): a message is "delivered" once it
is in the history the page reads, whether or not a page is open right now.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from carapace.channels.base import (
    ButtonClick,
    ChannelCallbacks,
    ClickAnswer,
    InboundEvent,
    InboundMessage,
    OutboundMessage,
)
from carapace.config import Home, Settings
from carapace.errors import DeliveryError, ValidationError
from carapace.jsonutil import dumps
from carapace.timefmt import Clock, SystemClock, new_id
from carapace.web.store import StoredMessage, WebStore

logger = logging.getLogger(__name__)

CHANNEL = "web"
SECRET_KEYS: tuple[str, ...] = ()
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
_PLATFORM = re.compile(r"^([a-z0-9][a-z0-9_.-]{0,39})(?:/([A-Za-z0-9_.:-]{1,120}))?$")
QUEUE_MAX = 1000


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise ValidationError(
            f"bad web user name {name!r}: 1-40 of a-z, 0-9, '.', '_', '-' (lower case)"
        )
    return name


def chat_platform_id(name: str, agent_group_id: str) -> str:
    return f"{name}/{agent_group_id}"


def owner_of(platform_id: str) -> str | None:
    """The web user name a platform id belongs to (None when it is not a web address)."""
    m = _PLATFORM.match(platform_id)
    return m.group(1) if m else None


@dataclass(eq=False)
class Subscriber:
    user: str
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_MAX)
    )


class WebChannel:
    channel_type = CHANNEL
    supports_threads = False
    dedupes_sends = True  # a re-send after a crash finds the row it stored (``deliver``)
    streams_replies = True  # a reply is shown as it is written, by edits (host/preview.py)
    edit_chars = 100_000

    def __init__(self, home: Home, *, clock: Clock | None = None) -> None:
        self.home = home
        self.clock: Clock = clock or SystemClock()
        self.store: WebStore | None = None
        self.callbacks: ChannelCallbacks | None = None
        self.subscribers: set[Subscriber] = set()
        self._redeliver: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, callbacks: ChannelCallbacks) -> None:
        self.callbacks = callbacks
        if self.store is None:
            self.store = WebStore.open(self.home)
        pending = self.store.unrouted()
        if pending:  # typed before a crash, never committed: offered to the router again
            self._redeliver = asyncio.get_running_loop().create_task(self._offer_again(pending))

    async def _offer_again(self, pending: list[tuple[StoredMessage, str]]) -> None:
        for msg, eid in pending:
            owner = owner_of(msg.platform_id)
            if owner is None or "/" not in msg.platform_id or self.callbacks is None:
                continue
            text = msg.content.get("text", "") if isinstance(msg.content, dict) else ""
            try:
                await self._route(owner, msg, str(text), self._store().files_of(msg.id), eid)
            except Exception:
                logger.exception("web message %s not routed again", msg.id)
                return

    async def stop(self) -> None:
        if self._redeliver is not None and not self._redeliver.done():
            self._redeliver.cancel()
            with contextlib.suppress(BaseException):
                await self._redeliver
        for sub in list(self.subscribers):
            self._push(sub, {"type": "bye"})
        self.subscribers.clear()
        self.callbacks = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _store(self) -> WebStore:
        if self.store is None:
            raise DeliveryError("the web channel is not started")
        return self.store

    # -- live pages -----------------------------------------------------------------------------
    def subscribe(self, user: str) -> Subscriber:
        sub = Subscriber(user)
        self.subscribers.add(sub)
        if self.callbacks is not None:
            self.callbacks.on_ready(CHANNEL)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _push(self, sub: Subscriber, event: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a stuck page reloads its history
            sub.queue.put_nowait(event)

    def publish(self, platform_id: str, event: dict[str, Any]) -> None:
        user = owner_of(platform_id)
        for sub in list(self.subscribers):
            if sub.user == user:
                self._push(sub, {**event, "chat": platform_id})

    # -- inbound ----------------------------------------------------------------------------------
    async def user_says(
        self, name: str, agent_group_id: str, text: str, *,
        files: tuple[tuple[str, bytes], ...] = (), event_id: str | None = None,
    ) -> tuple[StoredMessage, Any]:  # fmt: skip
        """A message typed in the page: stored in the history (not yet routed), then handed
        to the router (which applies the access gate to ``web:<name>``) and marked routed
        once its rows committed; one the host died on is offered again at the next start.
        Returns (stored, route result)."""
        if self.callbacks is None:
            raise DeliveryError("the web chat channel is not started")
        pid = chat_platform_id(check_user_name(name), agent_group_id)
        eid = event_id or new_id("web", self.clock.now())
        stored = self._store().add_message(
            pid, "in", "chat", {"text": text, "sender": name}, self.clock.now(), event_id=eid,
            files=files,
        )  # fmt: skip
        self.publish(pid, {"type": "message", "message": stored.to_json()})
        return stored, await self._route(name, stored, text, list(files), eid)

    async def _route(
        self, name: str, stored: StoredMessage, text: str, files: list[tuple[str, bytes]],
        eid: str,
    ) -> Any:  # fmt: skip
        assert self.callbacks is not None
        doc: dict[str, Any] = {"text": text, "sender": name, "senderId": f"web:{name}"}
        if files:
            doc["attachments"] = [
                {"name": n, "type": "file", "data": base64.b64encode(d).decode()} for n, d in files
            ]
        event = InboundEvent(CHANNEL, stored.platform_id, None,
                             InboundMessage(eid, "chat", dumps(doc), stored.created_at,
                                            is_mention=None, is_group=False))  # fmt: skip
        result = await self.callbacks.on_inbound(event)
        self._store().mark_routed(stored.id)
        return result

    async def click(self, name: str, platform_id: str, card_id: str, index: int) -> ClickAnswer:
        """A card's button pressed in ``name``'s page: handed to the host's approvals entry
        point (``on_action``), which decides whether ``web:<name>`` may answer."""
        if self.callbacks is None:
            raise DeliveryError("the web chat channel is not started")
        return await self.callbacks.on_action(
            ButtonClick(CHANNEL, card_id, str(index), f"web:{name}", platform_id, None)
        )

    # -- outbound ---------------------------------------------------------------------------------
    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        if owner_of(platform_id) is None:
            raise DeliveryError(f"not a web chat address: {platform_id!r}", permanent=True)
        files = tuple((f.name, f.data) for f in message.files)
        if message.resend and message.message_out_id:  # the host crashed after the send?
            try:
                done = self._store().find_out(message.message_out_id, platform_id)
            except sqlite3.Error as exc:
                raise DeliveryError(f"web chat history not readable: {exc}") from None
            if done is not None:  # stored before the crash: the page shows it already
                return f"web-{done.id}"
        try:
            stored = self._store().add_message(
                platform_id, "out", message.kind, message.content, self.clock.now(),
                message_out_id=message.message_out_id, in_reply_to=message.in_reply_to,
                files=files,
            )  # fmt: skip
        except sqlite3.Error as exc:  # not in the history: not delivered (retried)
            raise DeliveryError(f"web chat history not written: {exc}")
        self.publish(platform_id, {"type": "message", "message": stored.to_json()})
        return f"web-{stored.id}"

    def _stored_id(self, message_id: str) -> int | None:
        if message_id.startswith("web-") and message_id[4:].isdigit():
            return int(message_id[4:])
        return None

    async def edit(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        mid = self._stored_id(message_id)
        msg = self._store().get_message(mid) if mid is not None else None
        if msg is None or msg.platform_id != platform_id:
            raise DeliveryError(f"no web message {message_id!r} in {platform_id}", permanent=True)
        old = msg.content if isinstance(msg.content, dict) else {}
        content: dict[str, Any] = {"text": text, "edited": True}  # a decided card: no buttons
        if old.get("reactions"):
            content["reactions"] = old["reactions"]
        self._store().update_content(msg.id, content)
        self.publish(platform_id, {"type": "edit", "id": msg.id, "content": content})

    async def react(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        mid = self._stored_id(message_id)
        msg = self._store().get_message(mid) if mid is not None else None
        if msg is None or msg.platform_id != platform_id:
            raise DeliveryError(f"no web message {message_id!r} in {platform_id}", permanent=True)
        content = dict(msg.content) if isinstance(msg.content, dict) else {"text": str(msg.content)}
        content["reactions"] = [*content.get("reactions", []), emoji][-20:]
        self._store().update_content(msg.id, content)
        self.publish(platform_id, {"type": "edit", "id": msg.id, "content": content})

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        self.publish(platform_id, {"type": "typing", "on": True})


def from_home(home: Home, secrets: Mapping[str, str], settings: Settings) -> WebChannel | None:
    """The web chat channel when ``[web] enabled = true`` (None otherwise)."""
    from carapace.web.config import web_settings

    return WebChannel(home) if web_settings(settings, home).enabled else None


async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    return "web chat (no credentials: users log in with `carapace web login-link`)"
