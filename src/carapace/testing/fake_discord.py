"""A fake Discord on loopback for tests: the gateway WebSocket (``fake_discord_gateway``) and
the REST routes discord.py uses for a bot that reads and writes messages.

It keeps what a person would see: guilds with text channels and threads, DM channels, every
message (the bot's and the people's), reactions, typing, interaction responses. It enforces
Discord's limits (2000 characters per message, 10 files, the upload size, 5 rows of 5
buttons, 100-character custom ids, 80-character labels, only the author edits a message) and
per-route rate limits, and it can inject 429s, refuse a channel (403) and drop the gateway.

The people's side: ``user_says`` posts a message as a person and dispatches MESSAGE_CREATE;
``user_edits`` dispatches MESSAGE_UPDATE; ``click`` dispatches INTERACTION_CREATE for a
button of one of the bot's messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from carapace.testing.fake_discord_gateway import Gateway

API = "/api/v10"
MAX_CONTENT = 2000
MAX_FILES = 10
MAX_NONCE = 25  # characters of a message nonce
MAX_UPLOAD = 10 * 1024 * 1024
MAX_ROWS, MAX_BUTTONS, MAX_CUSTOM_ID, MAX_LABEL = 5, 5, 100, 80
_ids = itertools.count(1_300_000_000_000_000_001)


def snowflake() -> str:
    return str(next(_ids))


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:  # fmt: skip
    """JSON with Discord's exact content type (discord.py parses only that one)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return json_response({"code": code, "message": message}, status=status)


@dataclass
class Person:
    id: str
    username: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "discriminator": "0",
                "global_name": self.username, "avatar": None, "bot": self.bot}  # fmt: skip


@dataclass
class Channel:
    id: str
    guild_id: str | None  # None: a DM
    name: str
    parent_id: str | None = None  # set for a thread
    recipient: str | None = None  # the person of a DM
    messages: list[dict[str, Any]] = field(default_factory=list)
    unreachable: bool = False
    # set: this many more bot posts succeed, then the channel answers 403 (a failure part-way)
    posts_before_failing: int | None = None

    @property
    def is_thread(self) -> bool:
        return self.parent_id is not None


@dataclass
class Bucket:
    limit: int
    window: float
    sent: list[float] = field(default_factory=list)

    def take(self, now: float) -> tuple[bool, int, float]:
        self.sent = [t for t in self.sent if now - t < self.window]
        if len(self.sent) >= self.limit:
            return False, 0, self.window - (now - self.sent[0])
        self.sent.append(now)
        reset = self.window - (now - self.sent[0])
        return True, self.limit - len(self.sent), reset


class FakeDiscord:
    """Start with ``await fake.start()``; ``base_url`` is what the adapter points at."""

    def __init__(self, *, token: str = "fake-discord-token", bot_name: str = "carapace-bot",
                 limit_per_route: int = 50, window: float = 1.0,
                 content_intent: bool = True) -> None:  # fmt: skip
        self.token = token
        self.content_intent = content_intent  # the portal's Message Content switch
        self.bot = Person(snowflake(), bot_name, bot=True)
        self.application_id = self.bot.id
        self.people: dict[str, Person] = {}
        self.guilds: dict[str, str] = {}  # id → name
        self.channels: dict[str, Channel] = {}
        self.reactions: list[tuple[str, str, str]] = []  # (channel, message, emoji)
        self.typing: list[str] = []
        self.nonce_hits = 0  # posts answered with the message their nonce already made
        self.interaction_responses: list[dict[str, Any]] = []
        self.followups: list[dict[str, Any]] = []
        self.allowed_mentions: list[Any] = []  # of every message the bot posted
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST call
        self.rate_limited: list[tuple[str, str]] = []  # 429s sent (injected or enforced)
        self.violations: list[str] = []  # requests sent while a bucket was exhausted
        self._inject_429: dict[tuple[str, str], list[float]] = {}
        self._buckets: dict[str, Bucket] = {}
        self._limit, self._window = limit_per_route, window
        self._interactions: dict[str, dict[str, Any]] = {}
        self._files: dict[str, bytes] = {}
        self.announce: list[tuple[str, str]] = []  # created since the last dispatch
        self.gateway = Gateway(self)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.changed = asyncio.Condition()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int = 0) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_route("*", API + "/{tail:.*}", self._rest)
        app.router.add_get("/cdn/{key}/{name}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server: Any = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        await self.gateway.disconnect(1000)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ------------------------------------------------------------------ the world
    def person(self, name: str) -> Person:
        for p in self.people.values():
            if p.username == name:
                return p
        p = Person(snowflake(), name)
        self.people[p.id] = p
        return p

    def guild(self, name: str) -> str:
        for gid, gname in self.guilds.items():
            if gname == name:
                return gid
        gid = snowflake()
        self.guilds[gid] = name
        self.announce.append(("GUILD_CREATE", gid))  # the bot joins it: told on the gateway
        return gid

    def text_channel(self, guild: str, name: str) -> Channel:
        gid = self.guild(guild)
        for c in self.channels.values():
            if c.guild_id == gid and c.name == name and not c.is_thread:
                return c
        c = Channel(snowflake(), gid, name)
        self.channels[c.id] = c
        self.announce.append(("CHANNEL_CREATE", c.id))
        return c

    def dm(self, person: Person) -> Channel:
        for c in self.channels.values():
            if c.guild_id is None and c.recipient == person.id:
                return c
        c = Channel(snowflake(), None, f"dm-{person.username}", recipient=person.id)
        self.channels[c.id] = c
        return c

    def thread(self, parent: Channel, name: str) -> Channel:
        """A thread under ``parent`` (THREAD_CREATE goes out before the next event)."""
        for c in self.channels.values():
            if c.parent_id == parent.id and c.name == name:
                return c
        t = Channel(snowflake(), parent.guild_id, name, parent_id=parent.id)
        self.channels[t.id] = t
        self.announce.append(("THREAD_CREATE", t.id))
        return t

    def channel_payload(self, c: Channel) -> dict[str, Any]:
        if c.guild_id is None:
            return {"id": c.id, "type": 1, "last_message_id": None,
                    "recipients": [self.people[c.recipient or ""].payload()]}  # fmt: skip
        if c.is_thread:
            return {"id": c.id, "type": 11, "guild_id": c.guild_id, "parent_id": c.parent_id,
                    "owner_id": self.bot.id, "name": c.name, "message_count": len(c.messages),
                    "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
                    "last_message_id": None,
                    "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                        "archive_timestamp": _iso(), "locked": False}}  # fmt: skip
        return {"id": c.id, "type": 0, "guild_id": c.guild_id, "name": c.name, "position": 0,
                "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}  # fmt: skip

    def guild_payload(self, gid: str) -> dict[str, Any]:
        chans = [c for c in self.channels.values() if c.guild_id == gid]
        return {
            "id": gid, "name": self.guilds[gid], "icon": None, "owner_id": snowflake(),
            "roles": [{"id": gid, "name": "@everyone", "permissions": "0", "position": 0,
                       "color": 0, "hoist": False, "managed": False, "mentionable": False,
                       "flags": 0}],
            "emojis": [], "stickers": [], "features": [], "member_count": 2, "large": False,
            "unavailable": False, "joined_at": _iso(), "members": [], "presences": [],
            "voice_states": [], "premium_tier": 0, "system_channel_id": None,
            "channels": [self.channel_payload(c) for c in chans if not c.is_thread],
            "threads": [self.channel_payload(c) for c in chans if c.is_thread],
        }  # fmt: skip

    def bot_user(self) -> dict[str, Any]:
        return {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0}

    def message_payload(self, c: Channel, author: Person, content: str, *,
                        attachments: list[dict[str, Any]] | None = None,
                        mentions: list[Person] | None = None,
                        reply_to: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        msg: dict[str, Any] = {
            "id": snowflake(), "channel_id": c.id, "author": author.payload(),
            "content": content, "timestamp": _iso(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [m.payload() for m in mentions or []],
            "mention_roles": [], "attachments": attachments or [], "embeds": [],
            "pinned": False, "type": 19 if reply_to else 0, "flags": 0, "components": [],
        }  # fmt: skip
        if c.guild_id is not None:
            msg["guild_id"] = c.guild_id
        if reply_to is not None:
            msg["message_reference"] = {"message_id": reply_to["id"], "channel_id": c.id,
                                        "guild_id": c.guild_id}  # fmt: skip
            msg["referenced_message"] = reply_to
        return msg

    # ------------------------------------------------------------------ the people's side
    async def user_says(self, channel: Channel, person: Person, text: str, *,
                        mention: bool = False, reply_to: dict[str, Any] | None = None,
                        file: tuple[str, bytes] | None = None) -> dict[str, Any]:  # fmt: skip
        """A person posts ``text`` (``mention``: prefixed with the bot's mention, as the
        client writes it); dispatched to the bot as MESSAGE_CREATE."""
        content = f"<@{self.bot.id}> {text}" if mention else text
        attachments = []
        if file is not None:
            key = snowflake()
            self._files[key] = file[1]
            attachments.append({"id": key, "filename": file[0], "size": len(file[1]),
                                "url": f"{self.base_url}/cdn/{key}/{file[0]}",
                                "proxy_url": f"{self.base_url}/cdn/{key}/{file[0]}",
                                "content_type": "application/octet-stream"})  # fmt: skip
        msg = self.message_payload(channel, person, content, attachments=attachments,
                                   mentions=[self.bot] if mention else [], reply_to=reply_to)  # fmt: skip
        channel.messages.append(msg)
        await self.gateway.dispatch("MESSAGE_CREATE", msg)
        return msg

    async def user_edits(self, message: dict[str, Any], text: str) -> dict[str, Any]:
        message["content"] = text
        message["edited_timestamp"] = _iso()
        await self.gateway.dispatch("MESSAGE_UPDATE", dict(message))
        return message

    async def click(self, message: dict[str, Any], button_index: int, person: Person) -> str:
        """``person`` presses the ``button_index``-th button of a bot message."""
        buttons = [b for row in message.get("components", []) for b in row["components"]]
        button = buttons[button_index]
        c = self.channels[message["channel_id"]]
        iid, token = snowflake(), f"itoken-{snowflake()}"
        data: dict[str, Any] = {
            "id": iid, "application_id": self.application_id, "type": 3, "token": token,
            "version": 1, "channel_id": c.id, "channel": self.channel_payload(c),
            "message": message, "locale": "en-US", "app_permissions": "0", "entitlements": [],
            "attachment_size_limit": MAX_UPLOAD, "authorizing_integration_owners": {},
            "data": {"custom_id": button["custom_id"], "component_type": 2},
        }  # fmt: skip
        if c.guild_id is None:
            data["user"] = person.payload()
        else:
            data["guild_id"] = c.guild_id
            data["member"] = {"user": person.payload(), "roles": [], "joined_at": _iso(),
                              "deaf": False, "mute": False, "flags": 0, "permissions": "0"}  # fmt: skip
        self._interactions[iid] = {"token": token, "message": message, "responded": False}
        await self.gateway.dispatch("INTERACTION_CREATE", data)
        return iid

    def bot_messages(self, channel: Channel) -> list[dict[str, Any]]:
        return [m for m in channel.messages if m["author"]["id"] == self.bot.id]

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> Any:
        """Wait (event-based) until ``predicate()`` is truthy; returns its value."""

        async def _wait() -> Any:
            async with self.changed:
                while not (value := predicate()):
                    await self.changed.wait()
                return value

        return await asyncio.wait_for(_wait(), timeout)

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------------ faults
    def inject_429(self, method: str, route: str, *, times: int = 1, retry_after: float = 0.05,
                   ) -> None:  # fmt: skip
        """The next ``times`` requests to ``method route`` (e.g. ``POST``,
        ``/channels/{id}/messages``) answer 429 with ``retry_after``."""
        self._inject_429.setdefault((method, route), []).extend([retry_after] * times)

    def make_unreachable(self, channel: Channel) -> None:
        channel.unreachable = True

    # ------------------------------------------------------------------ REST
    async def _cdn(self, request: web.Request) -> web.Response:
        data = self._files.get(request.match_info["key"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        route = re.sub(r"/\d{6,}", "/{id}", path)
        route = re.sub(r"/reactions/[^/]+/", "/reactions/{emoji}/", route)
        route = re.sub(r"/(interactions|webhooks)/\{id\}/[^/]+", r"/\1/{id}/{token}", route)
        self.requests.append((request.method, route))
        if not route.startswith("/interactions/") and not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        injected = self._inject_429.get((request.method, route))
        bucket_key = f"{request.method} {route} {self._major(path)}"
        if injected:
            return self._too_many(request.method, route, injected.pop(0), bucket_key)
        bucket = self._buckets.setdefault(bucket_key, Bucket(self._limit, self._window))
        ok, remaining, reset = bucket.take(time.monotonic())
        if not ok:
            self.violations.append(bucket_key)
            return self._too_many(request.method, route, reset, bucket_key)
        response = await self._route(request, path, route)
        response.headers.update({
            "X-RateLimit-Limit": str(bucket.limit), "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset-After": f"{max(reset, 0.001):.3f}",
            "X-RateLimit-Reset": f"{time.time() + max(reset, 0.001):.3f}",
            "X-RateLimit-Bucket": bucket_key.replace(" ", "_"),
        })  # fmt: skip
        await self._changed()
        return response

    @staticmethod
    def _major(path: str) -> str:
        m = re.match(r"/(channels|guilds|webhooks|interactions)/(\d+)", path)
        return m.group(2) if m else ""

    def _too_many(self, method: str, route: str, retry_after: float, bucket: str) -> web.Response:
        self.rate_limited.append((method, route))
        return json_response(
            {"message": "You are being rate limited.", "retry_after": retry_after,
             "global": False},
            status=429,
            headers={"Retry-After": f"{retry_after:.3f}", "X-RateLimit-Limit": "1", "Via": "1.1 google",
                     "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                     "X-RateLimit-Bucket": bucket.replace(" ", "_"), "X-RateLimit-Scope": "user"},
        )  # fmt: skip

    async def _route(self, request: web.Request, path: str, route: str) -> web.Response:
        from carapace.testing.fake_discord_rest import handle

        return await handle(self, request, path, route)

    def check_components(self, components: Any) -> str | None:
        if not isinstance(components, list):
            return "components must be a list"
        if len(components) > MAX_ROWS:
            return f"more than {MAX_ROWS} action rows"
        for row in components:
            buttons = row.get("components", []) if isinstance(row, dict) else None
            if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
                return f"an action row holds 1 to {MAX_BUTTONS} components"
            for b in buttons:
                if len(str(b.get("label", ""))) > MAX_LABEL:
                    return f"button label over {MAX_LABEL} characters"
                if "url" not in b and not 1 <= len(str(b.get("custom_id", ""))) <= MAX_CUSTOM_ID:
                    return f"custom_id must be 1 to {MAX_CUSTOM_ID} characters"
        return None

    @staticmethod
    def parse_json(text: str) -> Any:
        return json.loads(text) if text else {}
