"""The fake Slack's state and its Web API methods (``fake_slack.py`` adds the server, the
Socket Mode WebSocket and the human's side). Limits as Slack documents them; see there."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

TEXT_LIMIT = 40_000
MAX_BLOCKS = 50
SECTION_TEXT_LIMIT = 3_000
BUTTON_TEXT_LIMIT = 75
ACTION_ID_LIMIT = 255
VALUE_LIMIT = 2_000
MAX_ACTIONS = 25
REACTION_RE = re.compile(r"^[a-z0-9_+'-]{1,100}$")


@dataclass
class Message:
    channel: str
    ts: str
    user: str
    text: str = ""
    thread_ts: str | None = None
    blocks: list[Any] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    edited: bool = False
    bot: bool = False
    metadata: dict[str, Any] | None = None  # chat.postMessage's ``metadata``

    def buttons(self) -> list[dict[str, Any]]:
        return [e for b in self.blocks if b.get("type") == "actions" for e in b.get("elements", [])]


@dataclass
class Channel:
    id: str
    kind: str  # im | channel | group | mpim
    archived: bool = False
    user: str | None = None  # the person of an im


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int


class _ApiError(Exception):
    pass


class SlackState:
    """What the fake Slack knows, and its Web API (``POST /api/<method>``)."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-fake-bot",
        app_token: str = "xapp-fake-app",
        team_id: str = "T0FAKE",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        max_upload_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.max_upload_bytes = max_upload_bytes
        self.users: dict[str, str] = {}
        self.channels: dict[str, Channel] = {}
        self.all_messages: list[Message] = []
        self.reactions: list[tuple[str, str, str, str]] = []  # channel, ts, name, user
        self.files: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.acks: list[str] = []
        self.unacked: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self.revoked = False
        self._limits: dict[str, list[int]] = {}
        self.download_delay = 0.0  # a slow file host, in seconds
        self._fails: dict[str, list[list[Any]]] = {}  # method → [[calls to let pass, error]]
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ server
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dm_of(self, user: str) -> str:
        for c in self.channels.values():
            if c.kind == "im" and c.user == user:
                return c.id
        cid = f"D{user.lstrip('U')}"
        self.channels[cid] = Channel(cid, "im", user=user)
        return cid

    def messages(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        return [m for m in self.all_messages if m.channel == channel
                and (thread_ts is None or m.thread_ts == thread_ts or m.ts == thread_ts)]  # fmt: skip

    def bot_messages(self, channel: str | None = None) -> list[Message]:
        return [m for m in self.all_messages if m.bot and (channel is None or m.channel == channel)]

    def message(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.all_messages if m.channel == channel and m.ts == ts), None)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _poke(self) -> None:
        self._changed.set()

    def _ts(self) -> str:
        return f"{1_700_000_000 + next(self._clock)}.{next(self._ids):06d}"

    # ------------------------------------------------------------------ web api
    async def _params(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        params: dict[str, Any] = {}
        if "json" in ctype:
            loaded = json.loads(raw or b"{}")
            params = loaded if isinstance(loaded, dict) else {}
        elif raw:
            params = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        params.update({k: v for k, v in request.query.items() if k not in params})
        for key in ("blocks", "files"):
            if isinstance(params.get(key), str):
                try:
                    params[key] = json.loads(params[key])
                except ValueError:
                    params[key] = None
        return params

    def _token(self, request: web.Request, params: dict[str, Any]) -> str:
        auth = request.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ").strip() or str(params.get("token") or "")

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        token = self._token(request, params)
        limits = self._limits.get(method)
        if limits:
            retry_after = limits.pop(0)
            self.calls.append(Call(method, params, time.monotonic(), 429))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(retry_after)})  # fmt: skip
        self.calls.append(Call(method, params, time.monotonic(), 200))
        if self.revoked:
            return self._err("token_revoked")
        want = self.app_token if method == "apps.connections.open" else self.bot_token
        if not token:
            return self._err("not_authed")
        if token != want:
            return self._err("invalid_auth" if token.startswith(("xoxb-", "xapp-")) else
                             "not_allowed_token_type")  # fmt: skip
        fails = self._fails.get(method)
        if fails and fails[0][0] > 0:
            fails[0][0] -= 1
        elif fails:
            return self._err(str(fails.pop(0)[1]))
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._err("unknown_method")
        try:
            result: dict[str, Any] = handler(params)
        except _ApiError as exc:
            return self._err(str(exc))
        self._poke()
        return web.json_response({"ok": True, **result})

    @staticmethod
    def _err(error: str) -> web.Response:
        return web.json_response({"ok": False, "error": error})

    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://fake.slack.test/", "team": "Fake Team", "user": "carapace",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id}  # fmt: skip

    def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        ticket = f"t{next(self._ids)}"
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/ws?ticket={ticket}"}

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        uid = str(p.get("user") or "")
        if uid not in self.users:
            raise _ApiError("user_not_found")
        return {"user": {"id": uid, "name": self.users[uid], "real_name": self.users[uid],
                         "profile": {"display_name": self.users[uid]}}}  # fmt: skip

    def _m_conversations_open(self, p: dict[str, Any]) -> dict[str, Any]:
        uid = str(p.get("users") or "")
        if not uid or "," in uid:
            raise _ApiError("user_not_found")
        return {"channel": {"id": self.dm_of(uid)}}

    def _postable(self, channel: str) -> Channel:
        ch = self.channels.get(channel)
        if ch is None:
            raise _ApiError("channel_not_found")
        if ch.archived:
            raise _ApiError("is_archived")
        return ch

    @staticmethod
    def _check_blocks(blocks: Any) -> list[Any]:
        if blocks is None:
            return []
        if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
            raise _ApiError("invalid_blocks")
        for b in blocks:
            if not isinstance(b, dict) or not isinstance(b.get("type"), str):
                raise _ApiError("invalid_blocks")
            text = b.get("text")
            if isinstance(text, dict) and len(str(text.get("text", ""))) > SECTION_TEXT_LIMIT:
                raise _ApiError("invalid_blocks")
            if b["type"] == "actions":
                elements = b.get("elements") or []
                if not elements or len(elements) > MAX_ACTIONS:
                    raise _ApiError("invalid_blocks")
                for e in elements:
                    label = (e.get("text") or {}).get("text", "")
                    if (not label or len(label) > BUTTON_TEXT_LIMIT
                            or len(str(e.get("action_id", ""))) > ACTION_ID_LIMIT
                            or len(str(e.get("value", ""))) > VALUE_LIMIT):  # fmt: skip
                        raise _ApiError("invalid_blocks")
        return blocks

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._postable(str(p.get("channel") or ""))
        text = str(p.get("text") or "")
        blocks = self._check_blocks(p.get("blocks"))
        if not text and not blocks:
            raise _ApiError("no_text")
        if len(text) > TEXT_LIMIT:
            raise _ApiError("msg_too_long")
        thread_ts = p.get("thread_ts") or None
        if thread_ts and self.message(ch.id, str(thread_ts)) is None:
            raise _ApiError("thread_not_found")
        meta = p.get("metadata")
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                raise _ApiError("invalid_metadata_format") from None
        if meta is not None and not (isinstance(meta, dict) and isinstance(meta.get("event_type"), str)
                                     and isinstance(meta.get("event_payload"), dict)):  # fmt: skip
            raise _ApiError("invalid_metadata_format")
        msg = Message(ch.id, self._ts(), self.bot_user_id, text,
                      str(thread_ts) if thread_ts else None, blocks, bot=True, metadata=meta)  # fmt: skip
        self.all_messages.append(msg)
        return {"channel": ch.id, "ts": msg.ts,
                "message": {"text": text, "ts": msg.ts, "user": msg.user}}  # fmt: skip

    def _listed(self, msgs: list[Message], p: dict[str, Any]) -> dict[str, Any]:
        limit = min(max(int(p.get("limit") or 100), 1), 999)
        meta = str(p.get("include_all_metadata")).lower() in ("true", "1")
        out = []
        for m in sorted(msgs, key=lambda m: m.ts, reverse=True)[:limit]:
            item: dict[str, Any] = {"type": "message", "ts": m.ts, "user": m.user, "text": m.text}
            if m.thread_ts:
                item["thread_ts"] = m.thread_ts
            if m.bot:
                item["bot_id"] = self.bot_id
            if meta and m.metadata is not None:
                item["metadata"] = m.metadata
            out.append(item)
        return {"messages": out, "has_more": False}

    def _m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        """Newest first; top-level messages only (replies are in ``conversations.replies``)."""
        channel = str(p.get("channel") or "")
        if channel not in self.channels:
            raise _ApiError("channel_not_found")
        msgs = [m for m in self.all_messages
                if m.channel == channel and (m.thread_ts is None or m.thread_ts == m.ts)]  # fmt: skip
        return self._listed(msgs, p)

    def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(p.get("channel") or ""), str(p.get("ts") or "")
        if channel not in self.channels or self.message(channel, ts) is None:
            raise _ApiError("thread_not_found")
        msgs = [m for m in self.all_messages
                if m.channel == channel and (m.ts == ts or m.thread_ts == ts)]  # fmt: skip
        return self._listed(msgs, p)

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        self._postable(channel)
        msg = self.message(channel, str(p.get("ts") or ""))
        if msg is None:
            raise _ApiError("message_not_found")
        if not msg.bot:
            raise _ApiError("cant_update_message")
        text = str(p.get("text") or "")
        if len(text) > TEXT_LIMIT:
            raise _ApiError("msg_too_long")
        blocks = self._check_blocks(p.get("blocks"))
        if not text and not blocks:
            raise _ApiError("no_text")
        msg.text, msg.blocks, msg.edited = text, blocks, True
        return {"channel": channel, "ts": msg.ts, "text": text}

    def _m_reactions_add(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        self._postable(channel)
        ts, name = str(p.get("timestamp") or ""), str(p.get("name") or "")
        if self.message(channel, ts) is None:
            raise _ApiError("message_not_found")
        if not REACTION_RE.match(name):
            raise _ApiError("invalid_name")
        if (channel, ts, name, self.bot_user_id) in self.reactions:
            raise _ApiError("already_reacted")
        self.reactions.append((channel, ts, name, self.bot_user_id))
        return {}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(p.get("filename") or "")
        try:
            length = int(p.get("length") or 0)
        except ValueError:
            raise _ApiError("invalid_arguments")
        if not name or length <= 0:
            raise _ApiError("invalid_arguments")
        if length > self.max_upload_bytes:
            raise _ApiError("file_too_large")
        fid = f"F{next(self._ids):06d}"
        self.files[fid] = {"name": name, "length": length, "data": None, "title": name,
                           "mimetype": "application/octet-stream", "pending": True}  # fmt: skip
        return {"upload_url": f"{self.base}/upload/{fid}", "file_id": fid}

    async def _upload(self, request: web.Request) -> web.Response:
        fid = request.match_info["file_id"]
        f = self.files.get(fid)
        data = await request.read()
        self.calls.append(Call("upload", {"file_id": fid, "bytes": len(data)}, time.monotonic(),
                               200))  # fmt: skip
        if f is None or not f.get("pending") or len(data) != f["length"]:
            return web.Response(status=400, text="bad upload")
        f["data"] = data
        return web.Response(text=f"OK - {len(data)}")

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        items = p.get("files")
        if not isinstance(items, list) or not items:
            raise _ApiError("invalid_arguments")
        done = []
        for item in items:
            f = self.files.get(str(item.get("id") if isinstance(item, dict) else ""))
            if f is None or f.get("data") is None:
                raise _ApiError("file_not_found")
            f["pending"] = False
            f["title"] = str(item.get("title") or f["name"])
            done.append({"id": item["id"], "name": f["name"], "title": f["title"]})
        channel = p.get("channel_id")
        if channel:
            ch = self._postable(str(channel))
            thread_ts = p.get("thread_ts") or None
            msg = Message(ch.id, self._ts(), self.bot_user_id, str(p.get("initial_comment") or ""),
                          str(thread_ts) if thread_ts else None, files=done, bot=True)  # fmt: skip
            self.all_messages.append(msg)
        return {"files": done}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["file_id"]
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        self.calls.append(Call("download", {"file_id": fid}, time.monotonic(), 200))
        f = self.files.get(fid)
        if auth != self.bot_token or self.revoked:
            return web.Response(status=403, text="forbidden")
        if f is None or f.get("data") is None:
            return web.Response(status=404, text="no such file")
        if self.download_delay:
            await asyncio.sleep(self.download_delay)
        return web.Response(body=f["data"], content_type=f["mimetype"])
