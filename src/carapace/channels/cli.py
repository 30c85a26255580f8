"""The local CLI chat channel over ``data/cli.sock`` (spec §3.12, extended).

Socket: mode 0600, stale file unlinked at start, one JSON object per line.

Client → host:
  ``{"type": "hello", "mode": "chat" | "send"}``   (optional; default ``chat``)
  ``{"text": str, "id"?: str, "senderId"?: "cli:<user>", "sender"?: str}``
      a message in the chat ``cli``/``local`` (NanoClaw's plain line)
  ``{"text": str, "to": {"channelType", "platformId", "threadId"?}, "reply_to"?: {...}}``
      NanoClaw's admin transport: inject an event for any chat

Host → client:
  ``{"type": "ack", "id": <event id>, "routed": [<messages_in ids>], "dropped": reason|null}``
  ``{"type": "message", "id": <messages_out id>, "in_reply_to": str|null,
     "answers": [<messages_in ids>], "key": <idempotency key>|null, "kind": str,
     "text": str|null, "content": <content>}``
  (``answers``: every message of the batch the reply answers; ``key``: the same on a
  re-send after a host crash, so a client drops a message whose key it has shown)

The ack also carries ``"held": [<approval ids>]`` when the message waits for an admin's
approval (an unknown sender on a ``request_approval`` chat).

Replies go to every ``chat`` client, and to a ``send`` client when they answer one of its
own messages (``in_reply_to`` or ``answers``: a reply to a batch answers every sender in it). A message no connected client asked for (the reply to a client that has gone
away, e.g. to a held message approved later; a card) goes to every client, ``send`` ones
included: the next client of the chat receives it. With no reader at all ``deliver`` raises
``ChannelUnavailable``: the row stays undelivered until a reader connects (``on_ready``),
never silently "delivered".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carapace.channels.base import (
    Address,
    ChannelCallbacks,
    ChannelUnavailable,
    InboundEvent,
    InboundMessage,
    OutboundMessage,
)
from carapace.config import Home, Settings
from carapace.jsonutil import dumps
from carapace.timefmt import iso, new_id
from carapace.unixsock import start_private_server

logger = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return text or type(exc).__name__


CHANNEL = "cli"
PLATFORM_ID = "local"
MAX_LINE = 1024 * 1024
WRITE_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Client:
    writer: asyncio.StreamWriter
    mode: str = "chat"
    sent: set[str] = field(default_factory=set)

    def owns(self, message: OutboundMessage) -> bool:
        """The message answers one of ours (``in_reply_to`` or any id in ``answers``)."""
        ids = [i for i in (message.in_reply_to, *message.answers) if i]
        return any(i == s or i.startswith(s + ":") for i in ids for s in self.sent)


class CliChannel:
    channel_type = CHANNEL
    supports_threads = False
    dedupes_sends = True  # a client shows a message key once (chat: its id; send: its key)

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path
        self.clients: list[_Client] = []
        self.callbacks: ChannelCallbacks | None = None
        self.server: asyncio.AbstractServer | None = None

    async def start(self, callbacks: ChannelCallbacks) -> None:
        self.callbacks = callbacks
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.server = await start_private_server(self._serve, self.path, limit=MAX_LINE)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.clients):
            c.writer.close()
        self.clients.clear()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _send(self, client: _Client, obj: dict[str, Any]) -> bool:
        try:
            client.writer.write((dumps(obj) + "\n").encode())
            await asyncio.wait_for(client.writer.drain(), WRITE_TIMEOUT_S)
            return True
        except (OSError, TimeoutError, ConnectionError):
            self._drop(client)
            return False

    def _drop(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        client.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self.clients.append(client)
        if self.callbacks is not None:
            self.callbacks.on_ready(CHANNEL)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # over MAX_LINE: said, not silently dropped
                    await self._send(client, {"type": "error", "error": "line over 1 MiB: "
                                              "not accepted; connection closed"})  # fmt: skip
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                try:
                    obj = json.loads(line)
                except ValueError:
                    await self._send(client, {"type": "error", "error": "not JSON"})
                    continue
                if not isinstance(obj, dict):
                    continue
                await self._handle(client, obj)
        finally:
            self._drop(client)

    async def _handle(self, client: _Client, obj: dict[str, Any]) -> None:
        if obj.get("type") == "hello":
            client.mode = "send" if obj.get("mode") == "send" else "chat"
            if self.callbacks is not None:
                self.callbacks.on_ready(CHANNEL)
            return
        text = obj.get("text")
        if not isinstance(text, str) or self.callbacks is None:
            await self._send(client, {"type": "error", "error": "a line needs a text"})
            return
        eid = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else None
        eid = eid or new_id("cli")
        sender_id = obj.get("senderId") if isinstance(obj.get("senderId"), str) else "cli:local"
        sender = obj.get("sender") if isinstance(obj.get("sender"), str) else "cli"
        content = dumps({"text": text, "sender": sender, "senderId": sender_id})
        to = obj.get("to")
        if isinstance(to, dict) and to.get("channelType") and to.get("platformId"):
            rt = obj.get("reply_to")
            event = InboundEvent(
                str(to["channelType"]), str(to["platformId"]), to.get("threadId"),
                InboundMessage(eid, "chat", content, iso()),
                Address(str(rt["channelType"]), str(rt["platformId"]), rt.get("threadId"))
                if isinstance(rt, dict) and rt.get("channelType") and rt.get("platformId")
                else None,
            )  # fmt: skip
        else:
            event = InboundEvent(
                CHANNEL, PLATFORM_ID, None, InboundMessage(eid, "chat", content, iso())
            )
        client.sent.add(eid)
        try:
            result = await self.callbacks.on_inbound(event)
        except Exception as exc:  # e.g. a full disk: the sender hears it, the line is not lost
            logger.error("message %s could not be accepted: %s", eid, one_line(exc))
            reason = f"not stored, send it again later: {one_line(exc)}"
            await self._send(client, {"type": "ack", "id": eid, "routed": [], "dropped": reason,
                                      "held": []})  # fmt: skip
            return
        routed = [r.message_id for r in getattr(result, "routed", [])]
        await self._send(client, {"type": "ack", "id": eid, "routed": routed,
                                  "dropped": getattr(result, "dropped_reason", None),
                                  "held": list(getattr(result, "held", []))})  # fmt: skip

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        owners = [c for c in self.clients if c.owns(message)]
        targets = [c for c in self.clients if c.mode == "chat" or not owners or c in owners]
        if platform_id != PLATFORM_ID or not targets:
            raise ChannelUnavailable(f"no CLI client connected for {platform_id}")
        content = message.content
        text = content if isinstance(content, str) else None
        if isinstance(content, dict):
            t = content.get("text") or content.get("markdown")
            text = t if isinstance(t, str) else None
        line = {"type": "message", "id": message.message_out_id, "in_reply_to": message.in_reply_to,
                "answers": list(message.answers), "key": message.key, "kind": message.kind,
                "text": text, "content": content}  # fmt: skip
        ok = [await self._send(c, line) for c in targets]
        if not any(ok):
            raise ChannelUnavailable("every CLI client went away")
        return message.message_out_id


# --- the registry's entry points (carapace.channels.registry) ------------------------------

SECRET_KEYS: tuple[str, ...] = ()


def from_home(home: Home, secrets: Mapping[str, str], settings: Settings) -> CliChannel:
    """The CLI channel is always there: its socket is the home's ``data/cli.sock``."""
    return CliChannel(home.cli_socket)


async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    return "the local socket data/cli.sock (no credentials)"
