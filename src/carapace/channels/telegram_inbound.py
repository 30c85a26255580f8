"""Telegram updates → carapace inbound events, in NanoClaw's formats (spec/host.md App. A/C).

* channel type ``telegram``; platform id ``telegram:<chat id>`` (negative for groups);
  sender ``senderId`` = the raw user id, which the router namespaces to ``telegram:<id>``;
  message id ``<chat id>:<message id>``; kind ``chat-sdk`` with ``text``, ``sender``,
  ``senderId``, ``senderName``, ``author`` (as the Chat-SDK bridge stores them).
* A forum topic's messages carry ``thread_id`` = the topic's id (``message_thread_id``);
  the General topic and ordinary chats have none.
* ``isMention``: always in a private chat; in a group when the bot is ``@named``, text-
  mentioned, replied to, or a command is addressed to it (``/cmd@botname``).
* An edited message is a new event (id ``<chat>:<message>:edit:<edit date>``, content
  ``edited: true`` and ``originalId``). The Bot API reports no deletions of ordinary chats'
  messages (only business-account ones), so none reach the session.
* Photos (the largest size), documents, voice notes and audio become ``attachments`` with
  base64 ``data``, written into the session's ``inbox/`` by the host; a file over the cap is
  not downloaded and is named in the message as skipped.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from telegram import Message, MessageEntity, User
from telegram.error import BadRequest, NetworkError, TelegramError

from carapace.channels.base import InboundEvent, InboundMessage
from carapace.jsonutil import dumps
from carapace.timefmt import iso

logger = logging.getLogger(__name__)

CHANNEL = "telegram"

Download = Callable[[str], Awaitable[bytes]]


def platform_id(chat_id: int | str) -> str:
    return f"{CHANNEL}:{chat_id}"


def chat_of(pid: str) -> int:
    """The Telegram chat id of a platform id (``telegram:<id>``; a bare id is accepted)."""
    raw = pid.removeprefix(f"{CHANNEL}:")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"not a Telegram chat: {pid!r}") from None


def message_of(message_id: str) -> int:
    """The Telegram message id in ``<chat>:<message>[:…]`` (ours, or a router row id) or a
    bare number."""
    parts = message_id.split(":")
    for candidate in (parts[1] if len(parts) > 1 else None, parts[0]):
        if candidate is not None and candidate.lstrip("-").isdigit():
            return int(candidate)
    raise ValueError(f"not a Telegram message id: {message_id!r}")


def _name(user: User | None) -> str:
    if user is None:
        return "unknown"
    return user.full_name or user.username or str(user.id)


def is_mention(msg: Message, bot_id: int, bot_username: str) -> bool:
    if msg.chat.type == "private":
        return True
    handle = f"@{bot_username}".lower()
    reply = msg.reply_to_message
    # in a forum, every message "replies" to the topic's first message: that is not a mention
    if (
        reply is not None
        and reply.from_user is not None
        and reply.from_user.id == bot_id
        and not (msg.is_topic_message and reply.message_id == msg.message_thread_id)
    ):
        return True
    entities = msg.entities or msg.caption_entities or ()
    text = msg.text or msg.caption or ""
    for ent in entities:
        if ent.type == MessageEntity.TEXT_MENTION and ent.user is not None:
            if ent.user.id == bot_id:
                return True
            continue
        part = _entity_text(text, ent).lower()
        if ent.type == MessageEntity.MENTION and part == handle:
            return True
        if ent.type == MessageEntity.BOT_COMMAND and part.endswith(handle):
            return True
    return False


def _entity_text(text: str, ent: MessageEntity) -> str:
    """An entity's text: Telegram's offsets count UTF-16 code units."""
    raw = text.encode("utf-16-le")
    return raw[ent.offset * 2 : (ent.offset + ent.length) * 2].decode("utf-16-le", "replace")


def _files(msg: Message) -> list[tuple[str, str, str | None, str | None, int | None]]:
    """(kind, file_id, name, mime type, size) of the message's files."""
    out: list[tuple[str, str, str | None, str | None, int | None]] = []
    if msg.photo:
        big = msg.photo[-1]
        out.append(("image", big.file_id, f"photo-{msg.message_id}.jpg", "image/jpeg",
                    big.file_size))  # fmt: skip
    if msg.document is not None:
        d = msg.document
        out.append(("file", d.file_id, d.file_name, d.mime_type, d.file_size))
    if msg.voice is not None:
        v = msg.voice
        out.append(("voice", v.file_id, f"voice-{msg.message_id}.ogg", v.mime_type, v.file_size))
    if msg.audio is not None:
        a = msg.audio
        out.append(("audio", a.file_id, a.file_name, a.mime_type, a.file_size))
    return out


async def to_event(msg: Message, *, bot_id: int, bot_username: str, download: Download,
                   max_file_bytes: int, edited: bool = False) -> InboundEvent | None:  # fmt: skip
    """The inbound event for a message (None for what carries nothing to route, e.g. a
    service message or the bot's own)."""
    user = msg.from_user
    if user is None or user.id == bot_id:
        return None
    text = msg.text or msg.caption or ""
    files = _files(msg)
    if not text and not files:
        return None
    group = msg.chat.type != "private"
    mid = f"{msg.chat.id}:{msg.message_id}"
    content: dict[str, Any] = {
        "text": text, "sender": _name(user), "senderId": str(user.id),
        "senderName": _name(user),
        "author": {"userId": str(user.id), "userName": user.username or "",
                   "fullName": user.full_name or "", "isBot": bool(user.is_bot), "isMe": False},
    }  # fmt: skip
    reply = msg.reply_to_message
    if reply is not None and not (
        msg.is_topic_message and reply.message_id == msg.message_thread_id
    ):
        content["replyTo"] = {"text": reply.text or reply.caption or "",
                              "sender": _name(reply.from_user)}  # fmt: skip
    atts: list[dict[str, Any]] = []
    skipped: list[str] = []
    for kind, file_id, name, mime, size in files:
        att: dict[str, Any] = {"type": kind}
        if name:
            att["name"] = name
        if mime:
            att["mimeType"] = mime
        if size is not None:
            att["size"] = size
        if size is not None and size > max_file_bytes:
            att["skipped"] = f"over the {max_file_bytes // (1024 * 1024)} MiB limit"
            skipped.append(f"{name or kind} ({size} bytes): not downloaded, {att['skipped']}")
        else:
            try:
                data = await download(file_id)
            except TelegramError as exc:
                if isinstance(exc, NetworkError) and not isinstance(exc, BadRequest):
                    raise  # the network: the whole update is read again later
                data, att["skipped"] = b"", f"download failed: {exc.message}"
                skipped.append(f"{name or kind}: not downloaded, {att['skipped']}")
            if "skipped" in att:
                pass  # named in the text already
            elif len(data) > max_file_bytes:
                att["skipped"] = f"over the {max_file_bytes // (1024 * 1024)} MiB limit"
                skipped.append(f"{name or kind}: not downloaded, {att['skipped']}")
            else:
                att["data"] = base64.b64encode(data).decode("ascii")
        atts.append(att)
    if atts:
        content["attachments"] = atts
    if skipped:
        content["text"] = (text + "\n\n" if text else "") + "\n".join(f"[{s}]" for s in skipped)
    if edited:
        content["edited"] = True
        content["originalId"] = mid
        stamp = int(msg.edit_date.timestamp()) if msg.edit_date else 0
        mid = f"{mid}:edit:{stamp}"
    when = msg.edit_date if edited and msg.edit_date else msg.date
    ts = iso(when.astimezone(UTC)) if when is not None else iso()
    thread = str(msg.message_thread_id) if msg.is_topic_message and msg.message_thread_id else None
    return InboundEvent(
        CHANNEL, platform_id(msg.chat.id), thread,
        InboundMessage(mid, "chat-sdk", dumps(content), ts,
                       is_mention(msg, bot_id, bot_username), group),
    )  # fmt: skip
