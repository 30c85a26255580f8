"""The Discord channel adapter, on discord.py (gateway for events, REST for sending);
imported only when Discord is configured (``carapace.channels.discord``).

Inbound: DMs (always a mention), guild channels and threads (``thread_id``: NanoClaw's
thread id, so each thread has its own session), a mention of the bot or a reply to one of
its messages sets ``isMention``; an edit arrives as a new message marked ``edited``; files
are downloaded up to ``max_file_bytes`` each (larger ones are announced, not fetched) and
handed to the host, which writes them to the session's ``inbox/``. Across a dropped gateway
connection discord.py resumes the session and Discord replays what was missed; at a new
session the adapter reads what it missed from each channel's history (``discord_catchup``).
Events reach the router one at a time, in the order Discord sent them.

Outbound (``discord_outbound``): Markdown mapped for Discord, split at 2000 characters,
files (10 per message), edits, reactions, typing, and cards as buttons whose clicks go to
the host's single approvals entry point (``on_action``). Nobody is ever pinged by the bot.
Discord's per-route rate limits are honoured by discord.py (it waits ``retry_after`` on a
429 and follows the bucket headers). A refused send (403, 404, 400) is a permanent
delivery failure, which the host tells the agent; other failures are retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from carapace.channels import discord_format as fmt
from carapace.channels.base import (
    ButtonClick,
    ChannelCallbacks,
    InboundEvent,
    InboundMessage,
)
from carapace.channels.discord import CHANNEL_TYPE, DiscordError
from carapace.channels.discord_catchup import CATCH_UP_LIMIT, Cursor
from carapace.channels.discord_outbound import DiscordOutbound
from carapace.jsonutil import dumps

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 25 * 1024 * 1024  # the host's own cap on an inbound attachment
_API_BASE = Route.BASE
_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY


def point_at(base_url: str | None) -> None:
    """Send discord.py's REST calls and gateway connection to ``base_url`` (a test server
    or a proxy); None restores Discord's own. discord.py keeps these per process."""
    if base_url:
        base = base_url.rstrip("/")
        Route.BASE = f"{base}/api/v10"
        gw = base.replace("https://", "wss://").replace("http://", "ws://")
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{gw}/gateway")
    else:
        Route.BASE = _API_BASE
        DiscordWebSocket.DEFAULT_GATEWAY = _GATEWAY


def _reason(exc: BaseException) -> str:
    if isinstance(exc, discord.LoginFailure):
        return "Discord refused the bot token (401): it is wrong or was revoked"
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return "the Message Content intent is not enabled for this bot in Discord's portal"
    if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
        return "Discord refused the bot token on the gateway (4004): it was revoked"
    if isinstance(exc, discord.ConnectionClosed):
        return f"Discord closed the gateway connection ({exc.code}): {exc.reason or 'no reason'}"
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered {exc.status}: {exc.text or exc}".strip()
    return f"cannot reach Discord: {type(exc).__name__}: {exc}"


def _fatal(exc: BaseException) -> bool:
    """Discord refused the bot itself: trying again cannot help."""
    return isinstance(exc, discord.LoginFailure | discord.PrivilegedIntentsRequired) or (
        isinstance(exc, discord.ConnectionClosed)
        and exc.code in (4004, 4010, 4011, 4012, 4013, 4014)
    )


async def verify_token(token: str, base_url: str | None) -> str:
    """Check the token with Discord (``GET /users/@me``); returns ``@name (id)``."""
    point_at(base_url)
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        data = await http.static_login(token)
    except (discord.DiscordException, aiohttp.ClientError, OSError) as exc:
        raise DiscordError(_reason(exc)) from None
    finally:
        await http.close()
    return f"@{data.get('username')} ({data.get('id')})"


class _Client(discord.Client):
    """discord.py's client with its pause before a repeated IDENTIFY made adjustable
    (Discord allows one IDENTIFY per 5 s; tests against the fake need no pause)."""

    identify_pause = 5.0

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await asyncio.sleep(self.identify_pause)


class DiscordChannel(DiscordOutbound):
    """A Discord bot as a carapace channel (see the module doc)."""

    channel_type = CHANNEL_TYPE
    supports_threads = True
    dedupes_sends = True  # every post carries a nonce from the row's key (enforce_nonce)
    streams_replies = True  # a reply is shown as it is written, by edits (host/preview.py)
    edit_chars = 1900  # what one edit shows in full (Discord: 2,000 characters)

    def __init__(self, token: str, *, base_url: str | None = None,
                 max_file_bytes: int = MAX_FILE_BYTES, guild_ready_timeout: float = 2.0,
                 state_path: Path | None = None, identify_pause: float = 5.0,
                 retry_base: float = 1.0) -> None:  # fmt: skip
        self.token = token
        self.base_url = base_url
        self.max_file_bytes = max_file_bytes
        self.guild_ready_timeout = guild_ready_timeout  # discord.py's wait for GUILD_CREATEs
        self.identify_pause = identify_pause
        self.retry_base = retry_base  # seconds: the first retry's pause (doubles each time)
        self._stopping = False
        self.cursor = Cursor(state_path)  # what was routed, for the catch-up at a new session
        self.callbacks: ChannelCallbacks | None = None
        self.client: discord.Client | None = None
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._parents: dict[int, tuple[int, int]] = {}  # thread → (guild, parent channel)
        self._partial: dict[str, list[str]] = {}  # message key → its pieces already posted
        self._order = asyncio.Lock()  # discord.py runs each event as a task: keep their order

    # ------------------------------------------------------------------ lifecycle
    async def start(self, callbacks: ChannelCallbacks) -> None:
        """Log in (a refused token raises ``DiscordError``; an unreachable Discord is tried
        again in the background), then keep the gateway connection in the background; if it
        dies for good, ``on_status`` says why, once."""
        self.callbacks = callbacks
        point_at(self.base_url)
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.dm_messages = True
        intents.message_content = True
        client = _Client(intents=intents, max_messages=None,
                                allowed_mentions=discord.AllowedMentions.none(),
                                guild_ready_timeout=self.guild_ready_timeout)  # fmt: skip
        client.identify_pause = self.identify_pause
        self.client = client
        client.event(self.on_ready)
        client.event(self.on_message)
        client.event(self.on_raw_message_edit)
        client.event(self.on_interaction)
        logged_in = True
        try:
            await client.login(self.token)
        except discord.LoginFailure as exc:  # the token itself is refused: nothing to retry
            await client.close()
            raise DiscordError(_reason(exc)) from None
        except (discord.DiscordException, aiohttp.ClientError, OSError) as exc:
            logged_in = False  # Discord unreachable for now (no network yet): keep trying
            logger.warning("discord: cannot log in yet (%s); trying again", _reason(exc))
        self._task = asyncio.create_task(self._run(client, logged_in))

    async def _run(self, client: discord.Client, logged_in: bool) -> None:
        """discord.py reconnects and resumes by itself; when its loop ends anyway (or Discord
        could not be reached to log in), try again after ``min(1 h, 2^failures · retry_base
        s)`` (NanoClaw's gateway backoff), unless Discord refused the bot (a revoked token, a
        missing intent): that is reported, once."""
        failures = 0
        while not client.is_closed():
            try:
                if not logged_in:  # the failed try's session (and its connector) is closed
                    await client.http.close()
                    client.http.connector = discord.utils.MISSING
                    await client.login(self.token)
                    logged_in = True
                await client.connect(reconnect=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _fatal(exc):
                    self._failed(_reason(exc))
                    return
                failures += 1
                delay = min(3600.0, 2.0**failures * self.retry_base)
                logger.warning("discord: %s; again in %.1f s", _reason(exc), delay)
                await asyncio.sleep(delay)
        if not self._stopping:
            self._failed("the gateway connection was closed")

    def _failed(self, reason: str) -> None:
        self.failure = reason
        logger.error("discord: stopped: %s", reason)
        if self.callbacks is not None:
            self.callbacks.on_status(CHANNEL_TYPE, "failed", reason)

    async def stop(self) -> None:
        self._stopping = True
        if self.client is not None:
            await self.client.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._task = None

    async def on_ready(self) -> None:
        """A new gateway session (not a resume): read what was said since the last routed
        message of every channel heard from (``discord_catchup``), then we are ready."""
        logger.info("discord: connected as %s", self.client.user if self.client else "?")
        await self._catch_up()
        self.ready.set()

    async def _catch_up(self) -> None:
        if self.client is None:
            return
        async with self._order:
            for cid, mark in list(self.cursor.marks.items()):
                after, mark.failed = mark.after(), None
                channel = self.client.get_partial_messageable(cid, guild_id=mark.guild)
                n = 0
                try:
                    async for message in channel.history(
                        after=discord.Object(after), oldest_first=True, limit=CATCH_UP_LIMIT
                    ):
                        n += await self._route(message, edited=False)
                except (discord.DiscordException, aiohttp.ClientError, OSError) as exc:
                    logger.warning("discord: no catch-up for channel %s: %s", cid, _reason(exc))
                if n:
                    logger.info("discord: %d message(s) in channel %s caught up", n, cid)

    def _bot_id(self) -> int:
        user = self.client.user if self.client is not None else None
        return user.id if user is not None else 0

    # ------------------------------------------------------------------ inbound
    async def _address(self, channel: Any, guild_id: int | None) -> tuple[str, str | None]:
        """(platform id, thread id) of a message's channel, as NanoClaw names them."""
        if guild_id is None:
            return fmt.channel_id(None, str(channel.id)), None
        if isinstance(channel, discord.Thread):
            return (fmt.channel_id(str(guild_id), str(channel.parent_id)),
                    fmt.thread_id(str(guild_id), str(channel.parent_id), str(channel.id)))  # fmt: skip
        if isinstance(channel, discord.PartialMessageable) and self.client is not None:
            known = self._parents.get(channel.id)
            if known is None:  # a channel discord.py has not cached: ask Discord what it is
                with contextlib.suppress(discord.DiscordException, aiohttp.ClientError):
                    data: dict[str, Any] = dict(await self.client.http.get_channel(channel.id))
                    parent = data.get("parent_id")
                    if data.get("type") in (10, 11, 12) and parent:
                        known = (guild_id, int(str(parent)))
                        self._parents[channel.id] = known
            if known is not None:
                return (fmt.channel_id(str(guild_id), str(known[1])),
                        fmt.thread_id(str(guild_id), str(known[1]), str(channel.id)))  # fmt: skip
        return fmt.channel_id(str(guild_id), str(channel.id)), None

    def _is_mention(self, message: discord.Message) -> bool:
        bot = self._bot_id()
        if _guild_id(message) is None or any(u.id == bot for u in message.mentions):
            return True
        ref = message.reference.resolved if message.reference is not None else None
        return isinstance(ref, discord.Message) and ref.author.id == bot

    async def _attachments(self, message: discord.Message) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for a in message.attachments:
            item: dict[str, Any] = {"type": _kind(a.content_type), "name": a.filename,
                                    "size": a.size, "mimeType": a.content_type}  # fmt: skip
            if a.size > self.max_file_bytes:
                item["note"] = f"not downloaded: over {self.max_file_bytes} bytes"
            else:
                try:
                    data = await a.read()
                except (discord.DiscordException, aiohttp.ClientError, OSError) as exc:
                    item["note"] = f"not downloaded: {exc}"
                else:
                    if len(data) > self.max_file_bytes:
                        item["note"] = f"not downloaded: over {self.max_file_bytes} bytes"
                    else:
                        item["data"] = base64.b64encode(data).decode()
            out.append(item)
        return out

    async def _event(self, message: discord.Message, *, edited: bool) -> InboundEvent:
        platform_id, thread = await self._address(message.channel, _guild_id(message))
        author = message.author
        name = getattr(author, "global_name", None) or author.name
        content: dict[str, Any] = {
            "id": str(message.id), "threadId": thread or platform_id, "text": message.clean_content,
            "author": {"userId": str(author.id), "userName": author.name, "fullName": name,
                       "isBot": author.bot, "isMe": False},
            "metadata": {"dateSent": message.created_at.isoformat(), "edited": edited},
            "attachments": await self._attachments(message),
            "isMention": self._is_mention(message),
            "senderId": str(author.id), "sender": name, "senderName": name,
        }  # fmt: skip
        ref = message.reference.resolved if message.reference is not None else None
        if isinstance(ref, discord.Message):
            ref_name = getattr(ref.author, "global_name", None) or ref.author.name
            content["replyTo"] = {"id": str(ref.id), "text": ref.clean_content[:500],
                                  "sender": ref_name}  # fmt: skip
        mid = str(message.id)
        if edited:
            stamp = message.edited_at or message.created_at
            mid = f"{message.id}-edit-{int(stamp.timestamp() * 1000)}"
            content["editOf"] = str(message.id)
        return InboundEvent(
            CHANNEL_TYPE, platform_id, thread,
            InboundMessage(mid, "chat-sdk", dumps(content), message.created_at.isoformat(),
                           is_mention=content["isMention"], is_group=_guild_id(message) is not None),
        )  # fmt: skip

    async def _inbound(self, message: discord.Message, *, edited: bool) -> None:
        async with self._order:  # FIFO: events reach the router in the gateway's order
            await self._route(message, edited=edited)

    async def _route(self, message: discord.Message, *, edited: bool) -> int:
        """Hand one message to the router; 1 when it was routed. A failure is remembered
        (``cursor``) so the next session reads it again."""
        if self.callbacks is None or message.author.bot or message.author.id == self._bot_id():
            return 0
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return 0
        guild = _guild_id(message)
        try:
            event = await self._event(message, edited=edited)
            await self.callbacks.on_inbound(event)
        except Exception:
            logger.exception("discord: inbound message %s not routed", message.id)
            if not edited:
                self.cursor.failed(message.channel.id, guild, message.id)
            return 0
        if not edited:
            self.cursor.routed(message.channel.id, guild, message.id)
        return 1

    async def on_message(self, message: discord.Message) -> None:
        await self._inbound(message, edited=False)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        message = payload.message
        if message.edited_at is None or "content" not in payload.data:
            return  # an embed or pin update, not a person editing their words
        await self._inbound(message, edited=True)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A card's button: acknowledged at once (Discord wants it within 3 s), then decided
        by the host's approvals engine with the clicker's id."""
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if interaction.type is not discord.InteractionType.component or not custom_id.startswith(
            "ncq:"
        ):
            return
        qid, _, value = custom_id[4:].rpartition(":")
        with contextlib.suppress(discord.DiscordException, aiohttp.ClientError):
            await interaction.response.defer()
        if self.callbacks is None or not qid:
            return
        guild_id = interaction.guild_id
        channel: Any = interaction.channel
        if channel is None and self.client is not None and interaction.channel_id is not None:
            channel = self.client.get_partial_messageable(interaction.channel_id, guild_id=guild_id)
        if channel is None:
            return
        platform_id, thread = await self._address(channel, guild_id)
        answer = await self.callbacks.on_action(
            ButtonClick(CHANNEL_TYPE, qid, value, str(interaction.user.id), platform_id, thread)
        )
        logger.info("discord: click on %s by %s: %s", qid, interaction.user.id, answer.status)


def _guild_id(message: discord.Message) -> int | None:
    """The message's guild, cached by discord.py or not (None: a DM)."""
    if message.guild is not None:
        return message.guild.id
    guild_id = getattr(message.channel, "guild_id", None)
    return guild_id if isinstance(guild_id, int) else None


def _kind(content_type: str | None) -> str:
    major = (content_type or "").split("/")[0]
    return {"image": "image", "video": "video", "audio": "audio"}.get(major, "file")
