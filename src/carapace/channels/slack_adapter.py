"""The Slack adapter itself (slack-bolt, slack_sdk, aiohttp): imported only when Slack is
configured, so a host without Slack never pays for these libraries. See ``slack.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from carapace.channels import slack_format as fmt
from carapace.channels.base import (
    ButtonClick,
    ChannelCallbacks,
    OutboundFile,
    OutboundMessage,
    off_loop_if_long,
)
from carapace.channels.slack import SlackError
from carapace.channels.slack_events import EventsMode, slack_error
from carapace.channels.slack_inbound import (
    CHANNEL,
    Arrivals,
    fetch_files,
    parse_message,
    platform_id,
    thread_id,
    with_attachments,
)
from carapace.errors import DeliveryError

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024
SEEN_MAX = 2000
METADATA_TYPE = "carapace_reply"
_CHANNEL_RE = re.compile(r"^[CDG][A-Z0-9]{1,30}$")
_TS_RE = re.compile(r"^\d{1,12}\.\d{1,9}$")
_SIGNING_RE = re.compile(r"^[0-9a-f]{32}$")
#: Slack's answers that mean "the token is wrong": no retry helps until someone fixes it.
AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired",
                         "account_inactive", "not_allowed_token_type"})  # fmt: skip
#: Slack's answers that mean "this message can never be sent as it is".
PERMANENT = frozenset({"channel_not_found", "is_archived", "not_in_channel", "msg_too_long",
                       "invalid_blocks", "no_text", "message_not_found", "cant_update_message",
                       "invalid_name", "thread_not_found", "file_too_large", "restricted_action",
                       "too_many_attachments", "invalid_arguments", "user_not_found",
                       "missing_scope"})  # fmt: skip


#: Slack names reactions; agents often write the emoji itself.
_EMOJI = {"👍": "thumbsup", "👎": "thumbsdown", "❤️": "heart", "❤": "heart", "✅": "white_check_mark",
          "👀": "eyes", "🎉": "tada", "😂": "joy", "🙏": "pray", "🔥": "fire", "❌": "x",
          "😀": "grinning", "🙂": "slightly_smiling_face", "🤔": "thinking_face"}  # fmt: skip


def make_client(token: str, base_url: str | None = None) -> AsyncWebClient:
    client = AsyncWebClient(token=token, base_url=base_url or AsyncWebClient.BASE_URL)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=3))
    return client


async def verify_tokens(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    """Check both tokens against Slack: ``auth.test`` for the bot token,
    ``apps.connections.open`` for the app token (a method called with an
    app-level token); returns ``@<bot name> (<team>)``. Raises ``SlackError`` with one line."""
    bot, app = secrets.get("SLACK_BOT_TOKEN", ""), secrets.get("SLACK_APP_TOKEN", "")
    signing = secrets.get("SLACK_SIGNING_SECRET")
    if not bot.startswith("xoxb-"):
        raise SlackError("SLACK_BOT_TOKEN must be a bot token (xoxb-…)")
    if signing is not None and not app:  # events mode: the secret is checked on use
        if not _SIGNING_RE.match(signing):
            raise SlackError("SLACK_SIGNING_SECRET must be the app's signing secret "
                             "(32 hex digits, Basic Information → App Credentials)")  # fmt: skip
    elif not app.startswith("xapp-"):
        raise SlackError("SLACK_APP_TOKEN must be an app-level token (xapp-…)")
    client = make_client(bot, base_url)
    try:
        who = await client.auth_test()
    except SlackApiError as exc:
        raise SlackError(f"Slack rejected the bot token: {slack_error(exc)}")
    except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise SlackError(f"Slack is unreachable: {exc}")
    if not app:
        return (
            f"@{who.get('user')} ({who.get('team')}); events over the web server at /slack/events"
        )
    try:
        await client.apps_connections_open(app_token=app)
    except SlackApiError as exc:
        raise SlackError(f"Slack rejected the app token: {slack_error(exc)}")
    except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise SlackError(f"Slack is unreachable: {exc}")
    return f"@{who.get('user')} ({who.get('team')})"


def _metadata(key: str | None, piece: int) -> dict[str, Any] | None:
    """What each posted piece carries so a re-send after a crash can find it."""
    if not key:
        return None
    return {"event_type": METADATA_TYPE, "event_payload": {"key": key, "piece": piece}}


class SlackChannel(EventsMode):
    channel_type = CHANNEL
    supports_threads = True
    dedupes_sends = True  # a re-send looks its pieces up by the key in their metadata
    streams_replies = True  # a reply is shown as it is written, by edits (host/preview.py)
    edit_chars = 3500  # what one edit shows in full (the adapter splits at 4,000)

    def __init__(
        self,
        bot_token: str,
        app_token: str | None,
        *,
        signing_secret: str | None = None,
        base_url: str | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        ping_interval: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.mode = "socket" if app_token else "events"
        if self.mode == "events" and not signing_secret:
            raise SlackError("Slack needs an app token (Socket Mode) or a signing secret "
                             "(Events API)")  # fmt: skip
        self.base_url = base_url
        self.max_file_bytes = max_file_bytes
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        self.file_host = urlsplit(base_url).hostname if base_url else "files.slack.com"
        self.status = "stopped"
        self.bot_user_id = ""
        self.callbacks: ChannelCallbacks | None = None
        self.client: AsyncWebClient | None = None
        self.app: AsyncApp | None = None
        self.handler: AsyncSocketModeHandler | None = None
        self._http: aiohttp.ClientSession | None = None
        self._names: dict[str, str] = {}
        self._seen: dict[str, None] = {}  # ids routed lately (message + app_mention twins)
        self._partial: dict[str, list[str]] = {}  # message → ts of the pieces already posted
        self._arrivals = Arrivals()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self, callbacks: ChannelCallbacks) -> None:
        """Check the tokens and connect. Tokens Slack rejects raise ``SlackError`` (the host
        logs it, records the channel as failed and serves the others); Slack unreachable
        is retried in the background (``status`` says so)."""
        self.callbacks = callbacks
        self._closing = False
        self.client = make_client(self.bot_token, self.base_url)
        self._http = aiohttp.ClientSession()
        self.app = self._build_app(self.client)
        if self.mode == "events":
            try:
                await self._start_events()
            except SlackError:
                await self.stop()
                raise
            return
        assert self.app_token is not None
        self.handler = AsyncSocketModeHandler(
            self.app, self.app_token, web_client=self.client, ping_interval=self.ping_interval
        )
        self.handler.client.message_listeners.insert(0, self._arrived)
        self.status = "connecting"
        try:
            if await self._connect_once():
                return
        except SlackError:
            await self.stop()
            raise
        self._task = asyncio.get_running_loop().create_task(self._retry())

    async def _connect_once(self) -> bool:
        """One attempt; True when connected, False when Slack could not be reached; raises
        ``SlackError`` when Slack rejected a token."""
        assert self.client is not None and self.handler is not None
        try:
            who = await asyncio.wait_for(self.client.auth_test(), self.connect_timeout)
            self.bot_user_id = str(who.get("user_id") or "")
            opened = await asyncio.wait_for(
                self.client.apps_connections_open(app_token=self.app_token or ""),
                self.connect_timeout,
            )
            self.handler.client.wss_uri = str(opened["url"])
            await asyncio.wait_for(self.handler.connect_async(), self.connect_timeout)  # type: ignore[no-untyped-call]
        except SlackApiError as exc:
            err = slack_error(exc)
            if err in AUTH_ERRORS:
                self.status = f"failed: Slack rejected a token ({err})"
                raise SlackError(f"Slack rejected a token ({err}); run `carapace channels "
                                 "add slack` with working tokens")  # fmt: skip
            self.status = f"retrying: {err}"
            return False
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.status = f"retrying: Slack unreachable ({exc or type(exc).__name__})"
            return False
        self.status = "connected"
        logger.info("slack: connected as %s (%s)", who.get("user"), who.get("team"))
        if self.callbacks is not None:
            self.callbacks.on_ready(CHANNEL)
        return True

    async def _retry(self) -> None:
        delay = 1.0
        while not self._closing:
            logger.warning("slack: %s; next try in %.0f s", self.status, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
            try:
                if await self._connect_once():
                    return
            except SlackError as exc:
                logger.error("slack: %s", exc)
                if self.callbacks is not None:
                    self.callbacks.on_status(CHANNEL, "failed", str(exc))
                return

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self.handler is not None:
            with contextlib.suppress(Exception):
                await self.handler.close_async()  # type: ignore[no-untyped-call]
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.status = "stopped"
        self.callbacks = None

    def _build_app(self, client: AsyncWebClient) -> AsyncApp:
        events = self.mode == "events"
        app = AsyncApp(client=client, process_before_response=True, logger=logger,
                       signing_secret=self.signing_secret if events else None,
                       request_verification_enabled=events)  # fmt: skip

        async def on_message(event: dict[str, Any], body: dict[str, Any]) -> None:
            event_id = body.get("event_id")
            async with self._arrivals.turn(event_id if isinstance(event_id, str) else None):
                await self._on_message(event)

        async def on_action(body: dict[str, Any], ack: Any) -> None:
            await self._on_click(body)
            await ack()

        async def ignore(ack: Any) -> None:
            await ack()

        app.event("message")(on_message)
        app.event("app_mention")(on_message)
        app.action(re.compile(r"^ncq:"))(on_action)
        app.action(re.compile(r".*"))(ignore)  # link buttons: nothing to do, but ack
        app.event(re.compile(r".*"))(ignore)  # events we do not use: ack, so no redelivery
        return app

    # ------------------------------------------------------------------ inbound
    async def _name(self, user: str) -> None:
        if user in self._names or self.client is None:
            return
        self._names[user] = user
        try:
            info = await self.client.users_info(user=user)
            u = info.get("user") or {}
            profile = u.get("profile") or {}
            name = profile.get("display_name") or u.get("real_name") or u.get("name")
            if isinstance(name, str) and name:
                self._names[user] = name
        except (SlackApiError, SlackClientError, aiohttp.ClientError, OSError, TimeoutError):
            pass

    async def _arrived(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        """Every envelope as it comes off the socket, in order, before bolt sees it: number
        the chat's message events (``Arrivals``). Nothing here may wait."""
        payload = message.get("payload") if message.get("type") == "events_api" else None
        event = payload.get("event") if isinstance(payload, dict) else None
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        if not isinstance(event, dict) or not isinstance(event_id, str):
            return
        if event.get("type") in ("message", "app_mention"):
            parsed = parse_message(event, self.bot_user_id, {})
            if parsed is not None:
                self._arrivals.arrived(event_id, parsed.event.platform_id)

    async def _on_message(self, event: dict[str, Any]) -> None:
        """One message event → the router; returns only once the router is done (bolt acks
        after this), so a failure here leaves the envelope for Slack to redeliver."""
        if self.callbacks is None:
            raise SlackError("slack channel is stopped")
        inner = event.get("message") if isinstance(event.get("message"), dict) else event
        user = inner.get("user") if isinstance(inner, dict) else None
        if isinstance(user, str) and user and user != self.bot_user_id:
            await self._name(user)
        parsed = parse_message(event, self.bot_user_id, self._names)
        if parsed is None:
            return
        inbound = parsed.event
        key = f"{inbound.platform_id}/{inbound.message.id}"
        if key in self._seen:
            return
        if parsed.files and self._http is not None:
            atts = await fetch_files(self._http, parsed.files, token=self.bot_token,
                                     file_host=self.file_host or "", max_bytes=self.max_file_bytes)  # fmt: skip
            inbound = with_attachments(parsed, atts)
        await self.callbacks.on_inbound(inbound)
        self._seen[key] = None  # only once the router took it: a failure is redelivered
        while len(self._seen) > SEEN_MAX:
            del self._seen[next(iter(self._seen))]

    async def _on_click(self, body: dict[str, Any]) -> None:
        actions = body.get("actions") or []
        action = actions[0] if actions and isinstance(actions[0], dict) else {}
        aid = str(action.get("action_id") or "")
        qid, _, tail = aid.removeprefix("ncq:").rpartition(":")
        user = (body.get("user") or {}).get("id")
        container = body.get("container") or {}
        channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
        if not qid or not isinstance(user, str) or not isinstance(channel, str):
            return
        value = str(action.get("value") or tail)
        thread_ts = container.get("thread_ts")
        if channel.startswith("D"):
            tid = thread_id(channel, thread_ts) if thread_ts else None
        else:
            tid = thread_id(channel, str(thread_ts or container.get("message_ts") or ""))
        if self.callbacks is None:
            raise SlackError("slack channel is stopped")
        await self.callbacks.on_action(
            ButtonClick(CHANNEL, qid, value, user, platform_id(channel), tid)
        )

    # ------------------------------------------------------------------ outbound
    def _client(self) -> AsyncWebClient:
        if self.client is None:
            self.client = make_client(self.bot_token, self.base_url)
        return self.client

    @staticmethod
    def _channel(pid: str) -> str:
        channel = pid.removeprefix(f"{CHANNEL}:")
        if not _CHANNEL_RE.match(channel):
            raise DeliveryError(f"not a Slack conversation id: {pid!r}", permanent=True)
        return channel

    @staticmethod
    def _thread_ts(tid: str | None, channel: str) -> str | None:
        if not tid:
            return None
        prefix = f"{CHANNEL}:{channel}:"
        ts = tid[len(prefix) :] if tid.startswith(prefix) else ""
        return ts if _TS_RE.match(ts) else None

    @staticmethod
    def _message_ts(message_id: str) -> str:
        """A message's ts from the id the agent names (an inbound row id is
        ``<ts>:<agent group>``, an edit's ``<ts>:edited:<edit ts>:<agent group>``)."""
        ts = message_id.split(":", 1)[0]
        if not _TS_RE.match(ts):
            raise DeliveryError(f"not a Slack message id: {message_id[:80]!r}", permanent=True)
        return ts

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except SlackApiError as exc:
            err = slack_error(exc)
            if err == "ratelimited":
                raise DeliveryError(f"slack {what}: still rate limited after retrying")
            if err in AUTH_ERRORS and self.callbacks is not None and self.status != "failed":
                self.status = "failed"  # said once: channels list / doctor show it
                self.callbacks.on_status(CHANNEL, "failed", f"Slack rejected the bot token ({err})")
            raise DeliveryError(f"slack {what}: {err}", permanent=err in PERMANENT)
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"slack {what}: {exc}")

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        channel = self._channel(platform_id)
        thread_ts = self._thread_ts(thread_id, channel)
        content = message.content
        blocks: list[dict[str, Any]] | None = None
        text = ""
        if isinstance(content, dict):
            if content.get("type") == "ask_question":
                blocks = fmt.question_blocks(content)
                text = str(content.get("text") or content.get("title") or "")
            elif content.get("type") == "card" and isinstance(content.get("card"), dict):
                blocks = fmt.card_blocks(content["card"]) or None
                text = fmt.card_fallback(content["card"], content.get("fallbackText"))
            else:
                raw = content.get("markdown") or content.get("text") or ""
                text = raw if isinstance(raw, str) else ""
        elif isinstance(content, str):
            text = content
        client = self._client()
        # pieces of this message already shown (a retry after a failure part-way posts only
        # the rest: no piece twice while this process lives)
        key = f"{platform_id}/{message.message_out_id}" if message.message_out_id else None
        done = self._partial.pop(key, []) if key else []
        if message.resend and message.key and not done:  # posted before a crash?
            done = await self._posted_before(channel, thread_ts, message.key)
        pieces: list[dict[str, Any]] = []
        if blocks:
            fallback = fmt.split(fmt.escape(text), fmt.TEXT_LIMIT)[0] if text else " "
            pieces.append({"text": fallback, "blocks": blocks})
        elif text.strip():
            chunks = await off_loop_if_long(text, _chunks)
            pieces += [{"text": c, "unfurl_links": False} for c in chunks]
        if message.files:
            pieces.append({"files": message.files})
        try:
            for piece in pieces[len(done) :]:
                if "files" in piece:
                    await self._upload(channel, thread_ts, piece["files"])
                    done.append("")
                    continue
                meta = _metadata(message.key, len(done))
                r = await self._call("chat.postMessage", client.chat_postMessage(
                    channel=channel, thread_ts=thread_ts, metadata=meta, **piece))  # fmt: skip
                done.append(str(r.get("ts")))
        except DeliveryError:
            if key and done:
                self._partial[key] = done
                while len(self._partial) > SEEN_MAX:
                    del self._partial[next(iter(self._partial))]
            raise
        return next((ts for ts in done if ts), None)

    async def _posted_before(self, channel: str, thread_ts: str | None, key: str) -> list[str]:
        """The pieces of the row with ``key`` that Slack already shows (each carries the key
        in its ``metadata``): the ts of each, in order, up to the first one missing. Looked
        up in the conversation's (or thread's) latest messages; when Slack cannot be asked,
        nothing is assumed posted (at least once)."""
        client = self._client()
        try:
            if thread_ts:
                r = await client.conversations_replies(channel=channel, ts=thread_ts, limit=200,
                                                       include_all_metadata=True)  # fmt: skip
            else:
                r = await client.conversations_history(channel=channel, limit=100,
                                                       include_all_metadata=True)  # fmt: skip
        except (SlackApiError, SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning(
                "slack: cannot look up a reply sent before a crash (%s); sending it", exc
            )
            return []
        found: dict[int, str] = {}
        for m in r.get("messages") or []:
            meta = m.get("metadata") if isinstance(m, dict) else None
            if not isinstance(meta, dict) or meta.get("event_type") != METADATA_TYPE:
                continue
            payload = meta.get("event_payload")
            if isinstance(payload, dict) and payload.get("key") == key:
                piece = payload.get("piece")
                if isinstance(piece, int):
                    found[piece] = str(m.get("ts"))
        done: list[str] = []
        while len(done) in found:
            done.append(found[len(done)])
        return done

    async def _upload(self, channel: str, thread_ts: str | None,
                      files: tuple[OutboundFile, ...]) -> None:  # fmt: skip
        uploads = [{"content": f.data, "filename": f.name, "title": f.name} for f in files]
        await self._call("files upload", self._client().files_upload_v2(
            file_uploads=uploads, channel=channel, thread_ts=thread_ts))  # fmt: skip

    async def edit(self, platform_id: str, thread_id: str | None, message_id: str,
                   text: str) -> None:  # fmt: skip
        channel = self._channel(platform_id)
        ts = self._message_ts(message_id)
        body = (await off_loop_if_long(text, _chunks))[0] if text.strip() else " "
        await self._call("chat.update", self._client().chat_update(
            channel=channel, ts=ts, text=body, blocks=[]))  # fmt: skip

    async def react(self, platform_id: str, thread_id: str | None, message_id: str,
                    emoji: str) -> None:  # fmt: skip
        channel = self._channel(platform_id)
        ts = self._message_ts(message_id)
        name = _EMOJI.get(emoji.strip(), emoji.strip().strip(":").lower())
        try:
            await self._call("reactions.add", self._client().reactions_add(
                channel=channel, timestamp=ts, name=name))  # fmt: skip
        except DeliveryError as exc:
            if "already_reacted" not in str(exc):
                raise

    async def open_dm(self, handle: str) -> str:
        """A person's DM (``conversations.open``) as a platform id ``slack:D…``."""
        user = handle.removeprefix(f"{CHANNEL}:")
        r = await self._call("conversations.open", self._client().conversations_open(users=user))
        channel = (r.get("channel") or {}).get("id")
        if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
            raise DeliveryError("slack conversations.open: no channel id")
        return platform_id(channel)


def _chunks(text: str) -> list[str]:
    return fmt.split(fmt.to_mrkdwn(text))
