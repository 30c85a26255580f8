"""The gateway half of the fake Discord (``fake_discord.py``): one WebSocket endpoint that
speaks the subset of gateway v10 discord.py uses — HELLO, IDENTIFY → READY + GUILD_CREATE,
HEARTBEAT → HEARTBEAT_ACK, RESUME (replays what the session missed, then RESUMED, or
INVALID_SESSION when the session is unknown) and DISPATCH with a per-session sequence.

Every dispatch is kept in its session's backlog, so a client that reconnects and resumes
gets the events sent while it was away, as Discord does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from carapace.testing.fake_discord import FakeDiscord

HELLO, IDENTIFY, HEARTBEAT, HEARTBEAT_ACK, RESUME, INVALID_SESSION, DISPATCH = 10, 2, 1, 11, 6, 9, 0
AUTH_FAILED = 4004  # Discord's close code for a bad token: the client must not reconnect
DISALLOWED_INTENTS = 4014  # a privileged intent the bot is not granted in the portal
MESSAGE_CONTENT = 1 << 15
_session_ids = itertools.count(1)


@dataclass
class GatewaySession:
    session_id: str
    seq: int = 0
    backlog: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None

    async def send(self, payload: dict[str, Any]) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps(payload))


class Gateway:
    """The gateway WebSocket of a ``FakeDiscord``."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        self.identifies = 0
        self.resumes = 0
        self.heartbeats = 0
        self.connected = asyncio.Event()  # set while a session is live (READY or RESUMED)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": HELLO, "d": {"heartbeat_interval": 30_000}}))
        session: GatewaySession | None = None
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, d = payload.get("op"), payload.get("d")
                if op == HEARTBEAT:
                    self.heartbeats += 1
                    await ws.send_str(json.dumps({"op": HEARTBEAT_ACK}))
                elif op == IDENTIFY:
                    if d.get("token") != self.fake.token:
                        await ws.close(code=AUTH_FAILED, message=b"Authentication failed.")
                        break
                    if (
                        int(d.get("intents") or 0) & MESSAGE_CONTENT
                        and not self.fake.content_intent
                    ):
                        await ws.close(code=DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
                        break
                    session = await self._identify(ws, d)
                elif op == RESUME:
                    session = await self._resume(ws, d)
                    if session is None:
                        await ws.send_str(json.dumps({"op": INVALID_SESSION, "d": False}))
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                self.connected.clear()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> GatewaySession:
        self.identifies += 1
        session = GatewaySession(f"fake-session-{next(_session_ids)}")
        self.sessions[session.session_id] = session
        self.current = session
        session.ws = ws
        self.fake.announce.clear()  # READY and GUILD_CREATE below tell everything
        ready = {
            "v": 10,
            "user": self.fake.bot_user(),
            "guilds": [{"id": gid, "unavailable": True} for gid in self.fake.guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.fake.gateway_url,
            "application": {"id": self.fake.application_id, "flags": 0},
            "shard": [0, 1],
            "private_channels": [],
            "relationships": [],
        }
        await self._dispatch_to(session, "READY", ready)
        for gid in self.fake.guilds:
            await self._dispatch_to(session, "GUILD_CREATE", self.fake.guild_payload(gid))
        self.connected.set()
        return session

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(str(d.get("session_id")))
        if session is None or d.get("token") != self.fake.token:
            return None
        self.resumes += 1
        session.ws = ws
        self.current = session
        after = int(d.get("seq") or 0)
        for event in [e for e in session.backlog if e["s"] > after]:
            await session.send(event)
        session.seq += 1
        await session.send({"op": DISPATCH, "t": "RESUMED", "s": session.seq, "d": {}})
        self.connected.set()
        return session

    async def _dispatch_to(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.backlog.append(payload)
        await session.send(payload)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to the bot's session; kept for a resume if it is not connected."""
        if self.current is None:
            raise RuntimeError("fake Discord: no gateway session (the bot never identified)")
        pending, self.fake.announce = self.fake.announce, []
        for kind, ident in pending:  # guilds and channels made since: as Discord tells them
            if kind == "GUILD_CREATE":
                await self._dispatch_to(self.current, kind, self.fake.guild_payload(ident))
            elif not any(k == "GUILD_CREATE" and i == self.fake.channels[ident].guild_id
                         for k, i in pending):  # fmt: skip
                told = self.fake.channel_payload(self.fake.channels[ident])
                if kind == "THREAD_CREATE":
                    told["newly_created"] = True
                await self._dispatch_to(self.current, kind, told)
        await self._dispatch_to(self.current, event, data)

    async def disconnect(self, code: int = 4000) -> None:
        """Close the live connection (4000: the client resumes; events sent meanwhile are
        replayed on RESUME)."""
        session = self.current
        if session is not None and session.ws is not None:
            ws, session.ws = session.ws, None
            self.connected.clear()
            await ws.close(code=code)

    def invalidate(self) -> None:
        """Forget every session: the next RESUME gets INVALID_SESSION (a fresh IDENTIFY)."""
        self.sessions.clear()
