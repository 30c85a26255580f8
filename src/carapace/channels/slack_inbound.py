"""Slack events → carapace's inbound events (the Slack adapter's receiving half).

Ids as NanoClaw's Chat-SDK bridge writes them: the chat is ``slack:<channel id>``
(``C…``/``G…``/``D…``), a person ``slack:<user id>`` (the router namespaces ``senderId``),
a message its ``ts``. Threads are the Chat SDK's ``slack:<channel>:<thread ts>``: in a
channel every message opens a thread (its own ts unless it is a reply), in a DM only a
reply in a thread has one. An edit is a new event with id ``<ts>:edited:<edit ts>`` and
``"edited": true`` (so an agent's reaction to it lands on the original message).

``isMention`` is true for every DM, a message naming the bot (``<@bot user id>``) and a
reply in a thread the bot started; ``isGroup`` is false only for DMs.

Files people share are fetched with the bot token from Slack's file host only (the token is
never sent anywhere else; no redirects followed), capped at ``max_file_bytes``; each becomes
an attachment with base64 ``data`` that the host writes to the session's ``inbox/``. A file
over the cap, or one that cannot be fetched, is listed with a ``note`` and no data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from carapace.channels.base import InboundEvent, InboundMessage
from carapace.jsonutil import dumps
from carapace.timefmt import iso

logger = logging.getLogger(__name__)

CHANNEL = "slack"
#: Message subtypes that are people talking; joins, deletions, bot posts and the rest are not.
_SPOKEN = (None, "file_share", "thread_broadcast", "me_message")
MAX_FILES = 10


def platform_id(channel: str) -> str:
    return f"{CHANNEL}:{channel}"


def thread_id(channel: str, thread_ts: str) -> str:
    return f"{CHANNEL}:{channel}:{thread_ts}"


@dataclass(frozen=True)
class Parsed:
    """One Slack message event, read."""

    event: InboundEvent
    files: tuple[dict[str, Any], ...]


def parse_message(event: dict[str, Any], bot_user_id: str, names: dict[str, str]) -> Parsed | None:
    """A ``message``/``app_mention`` event → the inbound event (files not yet fetched), or
    None for what is not a person speaking (the bot itself, other bots, joins, deletions)."""
    subtype = event.get("subtype")
    edited_ts: str | None = None
    inner: dict[str, Any] = event
    if subtype == "message_changed":
        raw = event.get("message")
        inner = raw if isinstance(raw, dict) else {}
        raw_edit = inner.get("edited")
        edited: dict[str, Any] = raw_edit if isinstance(raw_edit, dict) else {}
        edited_ts = str(edited.get("ts") or event.get("ts") or "")
        if not edited_ts or inner.get("subtype") not in _SPOKEN:
            return None
    elif subtype not in _SPOKEN:
        return None
    user = inner.get("user")
    channel = event.get("channel")
    ts = inner.get("ts")
    if not isinstance(user, str) or not user or not isinstance(channel, str) or not channel:
        return None
    if not isinstance(ts, str) or not ts or inner.get("bot_id") or user == bot_user_id:
        return None
    text = inner.get("text") if isinstance(inner.get("text"), str) else ""
    assert isinstance(text, str)
    is_dm = event.get("channel_type") == "im" or (
        not event.get("channel_type") and channel.startswith("D")
    )
    raw_thread = inner.get("thread_ts")
    thread_ts = raw_thread if isinstance(raw_thread, str) and raw_thread else None
    if is_dm:
        tid = thread_id(channel, thread_ts) if thread_ts else None
        is_mention = True
    else:
        tid = thread_id(channel, thread_ts or ts)
        is_mention = f"<@{bot_user_id}>" in text or (
            thread_ts is not None and thread_ts != ts
            and inner.get("parent_user_id", event.get("parent_user_id")) == bot_user_id
        )  # fmt: skip
    name = names.get(user) or user
    content: dict[str, Any] = {
        "text": text, "sender": name, "senderId": user, "senderName": name,
        "author": {"userId": user, "userName": name, "fullName": name, "isBot": False,
                   "isMe": False},
        "isMention": is_mention,
    }  # fmt: skip
    if edited_ts:
        content["edited"] = True
        content["metadata"] = {"edited": True}
    files = inner.get("files")
    file_list = tuple(f for f in files if isinstance(f, dict))[:MAX_FILES] if isinstance(
        files, list) else ()  # fmt: skip
    mid = f"{ts}:edited:{edited_ts}" if edited_ts else ts
    message = InboundMessage(mid, "chat-sdk", dumps(content), _when(ts), is_mention, not is_dm)
    return Parsed(InboundEvent(CHANNEL, platform_id(channel), tid, message), file_list)


def _when(ts: str) -> str:
    from datetime import UTC, datetime

    try:
        return iso(datetime.fromtimestamp(float(ts), UTC))
    except (ValueError, OverflowError, OSError):
        return iso()


def with_attachments(parsed: Parsed, attachments: list[dict[str, Any]]) -> InboundEvent:
    if not attachments:
        return parsed.event
    ev = parsed.event
    content = {**_loads(ev.message.content), "attachments": attachments}
    m = ev.message
    msg = InboundMessage(m.id, m.kind, dumps(content), m.timestamp, m.is_mention, m.is_group)
    return InboundEvent(ev.channel_type, ev.platform_id, ev.thread_id, msg, ev.reply_to)


def _loads(text: str) -> dict[str, Any]:
    from carapace.jsonutil import loads_or

    doc = loads_or(text, {})
    return doc if isinstance(doc, dict) else {}


async def fetch_files(
    session: aiohttp.ClientSession,
    files: tuple[dict[str, Any], ...],
    *,
    token: str,
    file_host: str,
    max_bytes: int,
) -> list[dict[str, Any]]:
    """Each shared file as an attachment: with base64 ``data`` when fetched within the cap."""
    out: list[dict[str, Any]] = []
    for f in files:
        name = str(f.get("name") or f.get("title") or "file")
        mime = str(f.get("mimetype") or "application/octet-stream")
        att: dict[str, Any] = {"type": _kind(mime), "name": name, "mimeType": mime}
        size = f.get("size")
        url = f.get("url_private_download") or f.get("url_private")
        if isinstance(size, int) and size > max_bytes:
            att["note"] = f"not downloaded: {size} bytes is over the {max_bytes}-byte limit"
        elif not isinstance(url, str) or urlsplit(url).hostname != file_host:
            att["note"] = "not downloaded: not on Slack's file host"
        else:
            data, note = await _download(session, url, token, max_bytes)
            if data is not None:
                att["data"] = base64.b64encode(data).decode()
                att["size"] = len(data)
            else:
                att["note"] = note
        out.append(att)
    return out


async def _download(
    session: aiohttp.ClientSession, url: str, token: str, max_bytes: int
) -> tuple[bytes | None, str]:
    try:
        async with session.get(
            url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:  # fmt: skip
            if resp.status != 200:
                return None, f"not downloaded: Slack answered HTTP {resp.status}"
            buf = bytearray()
            while chunk := await resp.content.read(65536):
                buf += chunk
                if len(buf) > max_bytes:
                    return None, f"not downloaded: over the {max_bytes}-byte limit"
            return bytes(buf), ""
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("slack file download failed: %s", exc)
        return None, "not downloaded: the download failed"


def _kind(mime: str) -> str:
    head = mime.split("/", 1)[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(head, "file")


class Arrivals:
    """A conversation's events reach the router in the order Slack sent them. slack_sdk
    handles envelopes concurrently, so a message whose file is being fetched (or whose
    sender's name is being looked up) could otherwise be overtaken by the next one.
    ``arrived`` numbers each event as it comes off the socket (synchronously, in order);
    ``turn`` waits until every earlier event of the same chat is done, at most ``wait_s``
    (an event bolt never hands over must not hold the chat up for longer)."""

    def __init__(self, wait_s: float = 5.0) -> None:
        self.wait_s = wait_s
        self._n = itertools.count(1)
        self._seq: dict[str, tuple[str, int]] = {}  # event id → (platform id, number)
        self._pending: dict[str, list[int]] = {}  # platform id → numbers not yet done
        self._cond: asyncio.Condition | None = None

    def arrived(self, event_id: str, platform_id: str) -> None:
        n = next(self._n)
        self._seq[event_id] = (platform_id, n)
        self._pending.setdefault(platform_id, []).append(n)

    def _first(self, platform_id: str) -> float:
        pend = self._pending.get(platform_id)
        return min(pend) if pend else float("inf")

    @contextlib.asynccontextmanager
    async def turn(self, event_id: str | None) -> AsyncIterator[None]:
        entry = self._seq.pop(event_id, None) if event_id else None
        if entry is None:
            yield
            return
        pid, n = entry
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        try:
            async with cond:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait_for(lambda: self._first(pid) >= n),
                                           self.wait_s)  # fmt: skip
            yield
        finally:
            pend = self._pending.get(pid, [])
            if n in pend:
                pend.remove(n)
            if not pend:
                self._pending.pop(pid, None)
            async with cond:
                cond.notify_all()
