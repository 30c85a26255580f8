"""The web chat: agent groups the user may reach, a chat page per agent group, live replies
(server-sent events), history, files both ways, card buttons, the agent's typing state."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from carapace.db import groups, messaging
from carapace.db.sessions import find_session
from carapace.errors import CarapaceError
from carapace.permissions.access import can_access
from carapace.web.channel import Subscriber, chat_platform_id, owner_of
from carapace.web.html import esc

if TYPE_CHECKING:
    from carapace.web.app import Req, WebApp, WebUser

HISTORY_PAGE = 50
SSE_TICK_S = 1.5
MAX_FILES = 10


def routes(app: WebApp) -> list[Route]:
    c = ChatRoutes(app)
    e = app.endpoint
    return [
        Route("/chat", e(c.index), methods=["GET"]),
        Route("/chat/{ag}", e(c.chat_page), methods=["GET"]),
        Route("/inbox", e(c.inbox), methods=["GET"]),
        Route("/api/history", e(c.history), methods=["GET"]),
        Route("/api/chat/{ag}/send", e(c.send), methods=["POST"]),
        Route("/api/action", e(c.action), methods=["POST"]),
        Route("/api/events", c.events, methods=["GET"]),
        Route("/files/{id:int}", e(c.file), methods=["GET"]),
    ]


def ensure_chat(db: sqlite3.Connection, name: str, agent_group_id: str, now: datetime) -> str:
    """The web chat between ``web:<name>`` and an agent group: a DM messaging group
    (``strict``: only people who pass the access gate are heard) wired to the group, created
    on first use. Returns its platform id."""
    pid = chat_platform_id(name, agent_group_id)
    mg = messaging.get_messaging_group_by_platform(db, "web", pid)
    if mg is None:
        g = groups.get_agent_group(db, agent_group_id)
        mg = messaging.create_messaging_group(
            db, "web", pid, name=f"web: {name} ↔ {g.name if g else agent_group_id}",
            is_group=False, unknown_sender_policy="strict", now=now,
        )  # fmt: skip
    if messaging.get_wiring_for(db, mg.id, agent_group_id) is None:
        messaging.create_wiring(db, mg.id, agent_group_id, engage_mode="pattern",
                                engage_pattern=".", now=now)  # fmt: skip
    return pid


class ChatRoutes:
    def __init__(self, app: WebApp) -> None:
        self.app = app

    @property
    def db(self) -> sqlite3.Connection:
        return self.app.host.db

    def reachable(self, user: WebUser) -> list[groups.AgentGroup]:
        return [
            g
            for g in groups.list_agent_groups(self.db)
            if can_access(self.db, user.id, g.id).allowed
        ]

    def _group(self, user: WebUser, ag: str) -> groups.AgentGroup | None:
        g = groups.get_agent_group(self.db, ag) or groups.get_agent_group_by_folder(self.db, ag)
        if g is None or not can_access(self.db, user.id, g.id).allowed:
            return None
        return g

    async def index(self, req: Req, user: WebUser) -> Response:
        items = "".join(
            f'<li><a href="/chat/{esc(quote(g.id))}">{esc(g.name)}</a> '
            f'<span class="muted">({esc(g.folder)})</span></li>'
            for g in self.reachable(user)
        )
        body = (f'<p>Agents you may talk to:</p><ul class="agents">{items or "<li>none</li>"}</ul>'
                '<p><a href="/inbox">Your inbox</a> (requests waiting for your decision).</p>')  # fmt: skip
        return self.app.render("Chat", body, user, "/chat")

    def _chat_body(self, pid: str, title: str, ag: str | None) -> str:
        form = ""
        if ag is not None:
            form = (f'<form id="composer" data-send="/api/chat/{esc(quote(ag))}/send">'
                    '<label for="text" class="sr">Message</label>'
                    '<textarea id="text" name="text" rows="2" required '
                    'placeholder="Write a message… (Enter sends, Shift+Enter for a new line)">'
                    '</textarea><label class="file">Attach <input type="file" id="files" '
                    'multiple></label><button type="submit">Send</button></form>')  # fmt: skip
        return (f'<section class="chat" data-chat="{esc(pid)}" aria-label="{esc(title)}">'
                '<button type="button" id="older" class="link">Load older messages</button>'
                '<ol id="log" aria-live="polite"></ol>'
                '<p id="typing" class="typing" hidden>The agent is typing…</p>'
                f"{form}</section>")  # fmt: skip

    async def chat_page(self, req: Req, user: WebUser) -> Response:
        g = self._group(user, req.params["ag"])
        if g is None:
            from carapace.web.app import refusal

            return refusal(req, 404, "no agent group of that name that you may talk to")
        pid = chat_platform_id(user.name, g.id)
        return self.app.render(f"Chat with {g.name}", self._chat_body(pid, g.name, g.id), user,
                               "/chat")  # fmt: skip

    async def inbox(self, req: Req, user: WebUser) -> Response:
        return self.app.render("Inbox", self._chat_body(user.name, "Inbox", None), user, "/chat")

    async def history(self, req: Req, user: WebUser) -> Response:
        pid = req.query.get("chat", "")
        if owner_of(pid) != user.name:
            return JSONResponse({"error": "not your chat"}, status_code=403)
        before = req.query.get("before")
        msgs = self.app.store.history(
            pid, before=int(before) if before and before.isdigit() else None, limit=HISTORY_PAGE
        )
        return JSONResponse({"messages": [m.to_json() for m in msgs],
                             "more": len(msgs) == HISTORY_PAGE})  # fmt: skip

    async def send(self, req: Req, user: WebUser) -> Response:
        chat = self.app.chat
        if chat is None:
            return JSONResponse({"error": "the web chat channel is not running"}, status_code=503)
        g = self._group(user, req.params["ag"])
        if g is None:
            return JSONResponse({"error": "you may not talk to that agent group"}, status_code=403)
        doc = req.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("text", ""), str):
            return JSONResponse({"error": "expected {text, files?}"}, status_code=400)
        text = str(doc.get("text") or "")
        files = _files(doc.get("files"), self.app.ws.max_upload_bytes)
        if isinstance(files, str):
            return JSONResponse({"error": files}, status_code=400)
        if not text.strip() and not files:
            return JSONResponse({"error": "an empty message"}, status_code=400)
        ensure_chat(self.db, user.name, g.id, self.app.now())
        stored, result = await chat.user_says(user.name, g.id, text, files=tuple(files))
        routed = [r.message_id for r in getattr(result, "routed", [])]
        return JSONResponse({"id": stored.id, "routed": routed,
                             "dropped": getattr(result, "dropped_reason", None),
                             "denied": getattr(result, "denied", None)}, status_code=202)  # fmt: skip

    async def action(self, req: Req, user: WebUser) -> Response:
        """A card button: the one approvals entry point (``handle_action``) decides whether
        this user may answer."""
        doc = req.json()
        if not isinstance(doc, dict):
            return JSONResponse({"error": "expected {card, index, chat}"}, status_code=400)
        card, index, pid = doc.get("card"), doc.get("index"), doc.get("chat")
        if not isinstance(card, str) or not isinstance(index, int) or not isinstance(pid, str):
            return JSONResponse({"error": "expected {card, index, chat}"}, status_code=400)
        if owner_of(pid) != user.name:
            return JSONResponse({"error": "not your chat"}, status_code=403)
        chat = self.app.chat
        if chat is None:
            return JSONResponse({"error": "the web chat channel is not running"}, status_code=503)
        answer = await chat.click(user.name, pid, card, index)
        return JSONResponse({"id": card, "status": answer.status, "message": answer.message})

    async def file(self, req: Req, user: WebUser) -> Response:
        found = self.app.store.file(int(req.params["id"]))
        if found is None or owner_of(found[0]) != user.name:
            from carapace.web.app import refusal

            return refusal(req, 404, "no such file")
        _, name, data = found
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:100] or "file"
        return Response(data, media_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{safe}"',
                                 "x-content-type-options": "nosniff"})  # fmt: skip

    # -- live events --------------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        app = self.app
        req = await app.read(request, 0)
        user = await app.on_host(self._user(req))
        if user is None:
            return JSONResponse({"error": "not signed in"}, status_code=401)
        pid = req.query.get("chat", "")
        if pid and owner_of(pid) != user.name:
            return JSONResponse({"error": "not your chat"}, status_code=403)
        sub = await app.on_host(self._subscribe(user))
        if sub is None:
            return JSONResponse({"error": "the web chat channel is not running"}, status_code=503)

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                last_typing: bool | None = None
                while True:
                    event = await app.on_host(self._next(sub))
                    if event is None:
                        typing = await app.on_host(self._typing(pid)) if pid else False
                        if typing != last_typing and pid:
                            last_typing = typing
                            yield _sse({"type": "typing", "chat": pid, "on": typing})
                        else:
                            yield ": ping\n\n"
                        continue
                    if event.get("type") == "bye":
                        return
                    if pid and event.get("chat") not in (pid, user.name):
                        continue
                    if event.get("type") == "message":
                        last_typing = None
                    yield _sse(event)
            finally:
                with contextlib.suppress(Exception):
                    await app.on_host(self._unsubscribe(sub))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})  # fmt: skip

    async def _user(self, req: Req) -> WebUser | None:
        return self.app.current_user(req)

    async def _subscribe(self, user: WebUser) -> Subscriber | None:
        chat = self.app.chat
        return chat.subscribe(user.name) if chat is not None else None

    async def _unsubscribe(self, sub: Subscriber) -> None:
        chat = self.app.chat
        if chat is not None:
            chat.unsubscribe(sub)

    async def _next(self, sub: Subscriber) -> dict[str, Any] | None:
        if self.app.chat is None:
            return {"type": "bye"}
        try:
            return await asyncio.wait_for(sub.queue.get(), SSE_TICK_S)
        except TimeoutError:
            return None

    async def _typing(self, pid: str) -> bool:
        """The agent is busy on this chat: its runner runs and the last word was the user's."""
        _, _, ag = pid.partition("/")
        if not ag:
            return False
        mg = messaging.get_messaging_group_by_platform(self.db, "web", pid)
        session = find_session(self.db, ag, mg.id, None) if mg is not None else None
        if session is None or not self.app.host.pool.is_running(session.id):
            return False
        last = self.app.store.history(pid, limit=1)
        return bool(last) and last[-1].direction == "in"


def decide(app: WebApp, card_id: str, value: str, user: WebUser, pid: str | None) -> dict[str, str]:
    """A click of ``user`` on a card option, through the approvals entry point."""
    from carapace.permissions.approvals import handle_action
    from carapace.permissions.approvals_host import HostContext

    try:
        outcome = handle_action(HostContext(app.host), card_id, value, user.id, "web", pid, None)
    except CarapaceError as exc:
        return {"id": card_id, "status": "invalid", "message": str(exc)}
    return outcome.to_json()


def _files(raw: Any, limit: int) -> list[tuple[str, bytes]] | str:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_FILES:
        return f"files: a list of at most {MAX_FILES} {{name, data}}"
    out: list[tuple[str, bytes]] = []
    total = 0
    for f in raw:
        if (
            not isinstance(f, dict)
            or not isinstance(f.get("name"), str)
            or not isinstance(f.get("data"), str)
        ):
            return "files: each needs a name and base64 data"
        try:
            data = base64.b64decode(f["data"], validate=True)
        except (binascii.Error, ValueError):
            return "files: data is not base64"
        total += len(data)
        if total > limit:
            return f"files: over the upload limit of {limit} bytes"
        name = f["name"].replace("/", "_").replace("\\", "_").strip()[:200] or "file"
        out.append((name, data))
    return out


def _sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, default=str) + "\n\n"
