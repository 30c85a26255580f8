"""The Telegram channel adapter (python-telegram-bot, long polling driven here).

Inbound: ``getUpdates`` in a loop; an update's offset is confirmed (the next call's
``offset``) only after the router has committed its rows (``on_inbound`` returned), so a
crash re-reads it and the router's dedup drops what was stored already. An update that
cannot be routed is retried with backoff, never skipped. Button presses (``ncq:<id>:<n>``)
go to ``on_action`` (the approvals engine), and the clicker gets a short answer.

Outbound: text is split at Telegram's limit on paragraph/sentence boundaries and rendered
as Telegram HTML (``telegram_format``); a piece Telegram cannot parse is sent again as plain
text. Cards/questions become inline keyboards; files are sent as documents after the text;
``edit``, ``react``, ``set_typing`` and ``open_dm`` are supported.

Faults: ``429 retry_after`` is waited out (up to ``MAX_RETRY_AFTER_S``, else the host retries
later); network errors are retried with backoff inside the one delivery, never blocking
other chats; a blocked bot, a deleted chat or a refused message is a permanent
``DeliveryError`` (the agent is told); a revoked token stops the adapter with one log line
and state ``failed`` (``channels list``, ``doctor``) while the host serves other channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReactionTypeEmoji
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest

from carapace.channels import telegram_inbound as inbound
from carapace.channels.base import ButtonClick, ChannelCallbacks, OutboundMessage, off_loop_if_long
from carapace.channels.telegram_format import split_text, to_html
from carapace.config import Home, Settings
from carapace.errors import ConfigError, DeliveryError

logger = logging.getLogger(__name__)

CHANNEL = inbound.CHANNEL
SECRET_KEYS: tuple[str, ...] = ("TELEGRAM_BOT_TOKEN",)
DEFAULT_MAX_FILE_MB = 20  # Telegram's own getFile limit
MAX_FILE_MB = 25  # the host writes no bigger attachment (host/sessions.py)
POLL_TIMEOUT_S = 25
MAX_RETRY_AFTER_S = 60.0
SEND_TRIES = 4
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]

T = TypeVar("T")

# the agent's add_reaction takes shortcodes; Telegram takes (a fixed set of) emoji
SHORTCODES = {
    "thumbs_up": "👍", "+1": "👍", "thumbsup": "👍", "thumbs_down": "👎", "-1": "👎",
    "heart": "❤", "fire": "🔥", "tada": "🎉", "party": "🎉", "eyes": "👀", "ok_hand": "👌",
    "clap": "👏", "pray": "🙏", "joy": "😂", "laughing": "😁", "thinking": "🤔",
    "white_check_mark": "👍", "check": "👍", "100": "💯", "rocket": "🚀",
}  # fmt: skip


@dataclass(frozen=True)
class TelegramConfig:
    token: str
    base_url: str | None = None  # the API root, e.g. http://127.0.0.1:8081 (a test server)
    poll_timeout_s: int = POLL_TIMEOUT_S
    max_file_bytes: int = DEFAULT_MAX_FILE_MB * 1024 * 1024
    backoff_s: float = 1.0  # first retry delay; doubles up to backoff_max_s
    backoff_max_s: float = 60.0


def _quiet_http_logs() -> None:
    """httpx logs each request's URL at INFO and python-telegram-bot its API URLs at DEBUG,
    and a Bot API URL holds the token: those loggers are kept above those levels so the
    token never reaches a log."""
    for name, level in (("httpx", logging.WARNING), ("httpcore", logging.WARNING),
                        ("telegram", logging.INFO)):  # fmt: skip
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < level:
            lg.setLevel(level)


def make_bot(token: str, base_url: str | None, *, read_timeout: float = 30.0) -> Bot:
    _quiet_http_logs()
    root = (base_url or "https://api.telegram.org").rstrip("/")
    return Bot(
        token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot",
        request=HTTPXRequest(connection_pool_size=16, read_timeout=read_timeout),
        get_updates_request=HTTPXRequest(connection_pool_size=2, read_timeout=10.0),
    )  # fmt: skip


class TokenRejected(ConfigError):
    code = "channel-token"


class TelegramChannel:
    channel_type = CHANNEL
    supports_threads = True
    streams_replies = True  # a reply is shown as it is written, by edits (host/preview.py)
    edit_chars = 4000  # what one edit shows in full (Telegram: 4096 UTF-16 units)

    def __init__(self, config: TelegramConfig) -> None:
        self.config = config
        self.bot = make_bot(config.token, config.base_url)
        self.callbacks: ChannelCallbacks | None = None
        self.bot_id = 0
        self.username = ""
        self.offset: int | None = None
        self.dead: str | None = None  # why the adapter stopped on its own
        self._poll: asyncio.Task[None] | None = None
        self._sent: dict[str, list[str]] = {}  # message_out_id → pieces already sent

    # ---------------------------------------------------------------- lifecycle
    async def start(self, callbacks: ChannelCallbacks) -> None:
        self.callbacks = callbacks
        self.dead = None
        try:
            await self._hello()
        except InvalidToken as exc:
            raise TokenRejected(f"telegram: the bot token was rejected ({exc.message})")
        except TelegramError as exc:  # the network: the poll loop keeps trying
            logger.warning("telegram: getMe failed (%s); retrying in the background", exc)
        self._poll = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _hello(self) -> None:
        await self.bot.initialize()  # getMe
        self.bot_id, self.username = self.bot.bot.id, self.bot.bot.username or ""
        logger.info("telegram: polling as @%s (id %s)", self.username, self.bot_id)

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(BaseException):
                await self._poll
            self._poll = None
        if self.offset is not None and self.dead is None:
            with contextlib.suppress(Exception):  # confirm what was routed (best effort)
                await asyncio.wait_for(self.bot.get_updates(offset=self.offset, timeout=0,
                                                            limit=1), 2.0)  # fmt: skip
        with contextlib.suppress(Exception):
            await self.bot.shutdown()
        self.callbacks = None

    def _die(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            if self.callbacks is not None:
                self.callbacks.on_status(CHANNEL, "failed", reason)

    # ---------------------------------------------------------------- inbound
    async def _poll_loop(self) -> None:
        delay = route_delay = self.config.backoff_s
        while True:
            try:
                if not self.bot_id:
                    await self._hello()
                updates = await self.bot.get_updates(
                    offset=self.offset, timeout=self.config.poll_timeout_s,
                    allowed_updates=ALLOWED_UPDATES,
                )  # fmt: skip
            except InvalidToken as exc:
                self._die(f"telegram: the bot token was rejected ({exc.message}); "
                          "`carapace channels add telegram` with a valid one")  # fmt: skip
                return
            except RetryAfter as exc:
                await asyncio.sleep(_retry_after(exc))
                continue
            except Exception as exc:  # the network, a 5xx, an answer PTB cannot parse
                logger.warning("telegram: getUpdates failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)
                continue
            delay = self.config.backoff_s
            for update in updates:
                try:
                    await self._handle(update)
                except Exception as exc:  # the router did not commit: read it again later
                    logger.warning("telegram: update %s not routed (%s); retrying in %.1f s",
                                   update.update_id, exc, route_delay)  # fmt: skip
                    await asyncio.sleep(route_delay)
                    route_delay = min(route_delay * 2, self.config.backoff_max_s)
                    break
                route_delay = self.config.backoff_s
                self.offset = update.update_id + 1

    async def _handle(self, update: Any) -> None:
        assert self.callbacks is not None
        if update.callback_query is not None:
            await self._click(update.callback_query)
            return
        msg: Message | None = update.message or update.edited_message
        if msg is None:
            return
        try:
            event = await inbound.to_event(
                msg, bot_id=self.bot_id, bot_username=self.username, download=self._download,
                max_file_bytes=self.config.max_file_bytes,
                edited=update.edited_message is not None,
            )  # fmt: skip
        except (TelegramError, ValueError, KeyError) as exc:  # cannot be represented: log, skip
            if isinstance(exc, NetworkError) and not isinstance(exc, BadRequest):
                raise  # a download that failed on the network: try the update again
            logger.error("telegram: update %s dropped: %s", update.update_id, exc)
            return
        if event is not None:
            await self.callbacks.on_inbound(event)

    async def _download(self, file_id: str) -> bytes:
        f = await self.bot.get_file(file_id)
        return bytes(await f.download_as_bytearray())

    async def _click(self, query: Any) -> None:
        assert self.callbacks is not None
        data = query.data or ""
        parts = data.split(":")
        if len(parts) < 3 or parts[0] != "ncq":
            with contextlib.suppress(TelegramError):
                await query.answer("This button is not carapace's.")
            return
        msg = query.message
        pid = inbound.platform_id(msg.chat.id) if msg is not None else None
        thread = None
        if msg is not None and getattr(msg, "is_topic_message", False) and msg.message_thread_id:
            thread = str(msg.message_thread_id)
        answer = await self.callbacks.on_action(ButtonClick(
            CHANNEL, ":".join(parts[1:-1]), parts[-1], str(query.from_user.id), pid, thread,
        ))  # fmt: skip
        with contextlib.suppress(TelegramError):
            await query.answer(answer.message[:190] or None)

    # ---------------------------------------------------------------- outbound
    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One API call with Telegram's faults handled (module docstring)."""
        if self.dead is not None:
            raise DeliveryError(self.dead)
        delay = self.config.backoff_s
        for attempt in range(1, SEND_TRIES + 1):
            try:
                return await fn()
            except RetryAfter as exc:
                wait = _retry_after(exc)
                if wait > MAX_RETRY_AFTER_S or attempt == SEND_TRIES:
                    raise DeliveryError(f"telegram: rate limited for {wait:g} s")
                await asyncio.sleep(wait)
            except InvalidToken as exc:
                self._die(f"telegram: the bot token was rejected ({exc.message})")
                raise DeliveryError(f"telegram: the bot token was rejected ({exc.message})")
            except Forbidden as exc:
                raise DeliveryError(f"telegram: {what} refused: {exc.message}", permanent=True)
            except ChatMigrated as exc:
                raise DeliveryError(f"telegram: the group moved to chat {exc.new_chat_id}",
                                    permanent=True)  # fmt: skip
            except BadRequest:
                raise
            except (TimedOut, NetworkError) as exc:
                if attempt == SEND_TRIES:
                    raise DeliveryError(f"telegram: {what} failed: {exc.message}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)
        raise DeliveryError(f"telegram: {what} failed")  # pragma: no cover

    async def _send_text(self, chat: int, thread: int | None, text: str,
                         markup: InlineKeyboardMarkup | None = None, *,
                         html: str | None = None) -> Message:  # fmt: skip
        rendered = to_html(text) if html is None else html

        async def fancy() -> Message:
            return await self.bot.send_message(chat, rendered, parse_mode=ParseMode.HTML,
                                               message_thread_id=thread, reply_markup=markup)  # fmt: skip

        async def plain() -> Message:
            return await self.bot.send_message(chat, text, message_thread_id=thread,
                                               reply_markup=markup)  # fmt: skip

        try:
            return await self._call("sendMessage", fancy)
        except BadRequest as exc:
            if "parse" not in exc.message.lower() and "entit" not in exc.message.lower():
                raise _permanent("sendMessage", exc)
            logger.info("telegram: formatting refused (%s); sent as plain text", exc.message)
        try:
            return await self._call("sendMessage", plain)
        except BadRequest as exc:
            raise _permanent("sendMessage", exc)

    async def deliver(self, platform_id: str, thread_id: str | None,
                      message: OutboundMessage) -> str | None:  # fmt: skip
        chat, thread = _address(platform_id, thread_id)
        content = message.content
        if isinstance(content, dict) and content.get("type") == "ask_question":
            return await self._send_card(chat, thread, content)
        if isinstance(content, dict) and content.get("type") == "card":
            return await self._send_link_card(chat, thread, content)
        text = content if isinstance(content, str) else None
        if isinstance(content, dict):
            t = content.get("markdown") or content.get("text")
            text = t if isinstance(t, str) else None
        key = message.message_out_id or ""
        done = self._sent.setdefault(key, []) if key else []
        pieces = await off_loop_if_long(text, split_text) if text else []
        for piece in pieces[len(done) :]:
            sent = await self._send_text(chat, thread, piece)
            done.append(f"{chat}:{sent.message_id}")
        for f in message.files:
            doc = await self._call("sendDocument", lambda f=f: self.bot.send_document(  # type: ignore[misc]
                chat, f.data, filename=f.name, message_thread_id=thread))  # fmt: skip
            done.append(f"{chat}:{doc.message_id}")
        self._sent.pop(key, None)
        return done[0] if done else None

    async def _send_card(self, chat: int, thread: int | None, content: dict[str, Any]) -> str:
        qid = str(content.get("questionId") or "")
        options = [o for o in content.get("options") or [] if isinstance(o, (dict, str))]
        labels = [o if isinstance(o, str) else str(o.get("label") or o.get("value") or "")
                  for o in options]  # fmt: skip
        datas = [f"ncq:{qid}:{i}" for i in range(len(labels))]
        title, question = str(content.get("title") or ""), str(content.get("question") or "")
        if labels and all(len(d.encode()) <= 64 for d in datas):
            body = "\n\n".join(x for x in (f"**{title}**" if title else "", question) if x)
            html = "\n\n".join(x for x in (f"<b>{_esc(title)}</b>" if title else "",
                                           _esc(question)) if x)  # fmt: skip
            markup = InlineKeyboardMarkup(
                [[InlineKeyboardButton(label[:64] or "·", callback_data=d)]
                 for label, d in zip(labels, datas, strict=True)]
            )  # fmt: skip
            sent = await self._send_text(chat, thread, body, markup, html=html)
            return f"{chat}:{sent.message_id}"
        fallback = str(
            content.get("text") or f"{title}\n\n{question}\nOptions: {', '.join(labels)}"
        )
        sent = await self._send_text(chat, thread, fallback, html=_esc(fallback))
        return f"{chat}:{sent.message_id}"

    async def _send_link_card(
        self, chat: int, thread: int | None, content: dict[str, Any]
    ) -> str | None:
        card = content.get("card") if isinstance(content.get("card"), dict) else {}
        assert isinstance(card, dict)
        lines = [f"<b>{_esc(str(card['title']))}</b>"] if card.get("title") else []
        if card.get("description"):
            lines.append(_esc(str(card["description"])))
        for child in card.get("children") or []:
            t = (
                child
                if isinstance(child, str)
                else child.get("text")
                if isinstance(child, dict)
                else None
            )
            if isinstance(t, str):
                lines.append(_esc(t))
        buttons = [[InlineKeyboardButton(str(a.get("label"))[:64], url=str(a["url"]))]
                   for a in card.get("actions") or []
                   if isinstance(a, dict) and str(a.get("url", "")).startswith(("https://", "http://"))]  # fmt: skip
        if not lines:
            fb = content.get("fallbackText")
            if not isinstance(fb, str) or not fb:
                return None
            lines = [_esc(fb)]
        html = "\n\n".join(lines)
        plain = "\n\n".join(_unesc(x) for x in lines)
        sent = await self._send_text(chat, thread, plain,
                                     InlineKeyboardMarkup(buttons) if buttons else None, html=html)  # fmt: skip
        return f"{chat}:{sent.message_id}"

    async def edit(self, platform_id: str, thread_id: str | None, message_id: str,
                   text: str) -> None:  # fmt: skip
        chat, _ = _address(platform_id, thread_id)
        mid = _message(message_id)
        piece = (await off_loop_if_long(text, split_text))[0] if text else "…"

        async def fancy() -> Any:
            return await self.bot.edit_message_text(to_html(piece), chat, mid,
                                                    parse_mode=ParseMode.HTML)  # fmt: skip

        async def plain() -> Any:
            return await self.bot.edit_message_text(piece, chat, mid)

        for attempt in (fancy, plain):
            try:
                await self._call("editMessageText", attempt)
                return
            except BadRequest as exc:
                low = exc.message.lower()
                if "not modified" in low:
                    return
                if attempt is plain or ("parse" not in low and "entit" not in low):
                    raise _permanent("editMessageText", exc)

    async def react(self, platform_id: str, thread_id: str | None, message_id: str,
                    emoji: str) -> None:  # fmt: skip
        chat, _ = _address(platform_id, thread_id)
        mid = _message(message_id)
        emoji = SHORTCODES.get(emoji.strip(":").lower(), emoji)
        try:
            await self._call("setMessageReaction", lambda: self.bot.set_message_reaction(
                chat, mid, [ReactionTypeEmoji(emoji)]))  # fmt: skip
        except BadRequest as exc:
            raise _permanent("setMessageReaction", exc)

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        if self.dead is not None:
            return
        try:
            chat, thread = _address(platform_id, thread_id)
            await self.bot.send_chat_action(chat, ChatAction.TYPING, message_thread_id=thread)
        except (TelegramError, DeliveryError) as exc:  # typing is best effort (spec §3.11)
            logger.debug("telegram: typing to %s failed: %s", platform_id, exc)

    def open_dm(self, handle: str) -> str:
        """A user's private chat with the bot has the user's id (they must have started it)."""
        return inbound.platform_id(int(handle.removeprefix(f"{CHANNEL}:")))


def _retry_after(exc: RetryAfter) -> float:
    """Seconds to wait (PTB 22 warns that ``retry_after`` becomes a timedelta: either works)."""
    import warnings

    from telegram.warnings import PTBDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: Any = exc.retry_after
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)


def _esc(text: str) -> str:
    import html

    return html.escape(text, quote=False)


def _unesc(text: str) -> str:
    import html
    import re

    return html.unescape(re.sub(r"</?b>", "", text))


def _permanent(what: str, exc: BadRequest) -> DeliveryError:
    return DeliveryError(f"telegram: {what} refused: {exc.message}", permanent=True)


def _address(platform_id: str, thread_id: str | None) -> tuple[int, int | None]:
    try:
        chat = inbound.chat_of(platform_id)
        thread = int(thread_id) if thread_id else None
    except ValueError as exc:
        raise DeliveryError(f"telegram: {exc}", permanent=True)
    return chat, thread


def _message(message_id: str) -> int:
    try:
        return inbound.message_of(message_id)
    except ValueError as exc:
        raise DeliveryError(f"telegram: {exc}", permanent=True)


# --- the registry's entry points (carapace.channels.registry) ------------------------------


def from_home(home: Home, secrets: Mapping[str, str], settings: Settings) -> TelegramChannel | None:
    """The adapter when ``TELEGRAM_BOT_TOKEN`` is set; ``[channels.telegram]`` may set
    ``base_url``, ``max_file_mb`` and ``poll_timeout_s``."""
    from carapace.channels.registry import base_url, channel_settings

    token = secrets.get("TELEGRAM_BOT_TOKEN")
    if not token:
        return None
    cfg = channel_settings(settings, CHANNEL)
    mb = cfg.get("max_file_mb", DEFAULT_MAX_FILE_MB)
    poll = cfg.get("poll_timeout_s", POLL_TIMEOUT_S)
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 0 < mb <= MAX_FILE_MB:
        raise ConfigError(f"carapace.toml: [channels.telegram] max_file_mb must be more than 0 "
                          f"and at most {MAX_FILE_MB} (the host's attachment limit), not {mb!r}")  # fmt: skip
    if isinstance(poll, bool) or not isinstance(poll, int) or not 0 <= poll <= 50:
        raise ConfigError(
            f"carapace.toml: [channels.telegram] poll_timeout_s must be 0..50, not {poll!r}"
        )
    return TelegramChannel(TelegramConfig(token, base_url(settings, CHANNEL), poll,
                                          int(mb * 1024 * 1024)))  # fmt: skip


async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    """``getMe`` with the token: the bot's ``@username (id N)``."""
    token = secrets.get("TELEGRAM_BOT_TOKEN", "")
    if ":" not in token:
        raise TokenRejected("telegram: a bot token looks like 123456:ABC… (from @BotFather)")
    bot = make_bot(token, base_url)
    try:
        me = await bot.get_me()
    except InvalidToken as exc:
        raise TokenRejected(f"telegram: the bot token was rejected ({exc.message})")
    except TelegramError as exc:
        raise ConfigError(f"telegram: cannot reach the Bot API: {exc.message}")
    finally:
        with contextlib.suppress(Exception):
            await bot.shutdown()
    return f"@{me.username} (id {me.id})"


__all__ = ["SECRET_KEYS", "TelegramChannel", "TelegramConfig", "from_home", "verify"]
