"""A fake Slack on loopback: the Socket Mode WebSocket and the Web API methods carapace uses.

In process, on the test's event loop::

    slack = FakeSlack()
    await slack.start()                  # slack.api_url → give it to slack_sdk as base_url
    ts = await slack.user_says("C1", "U1", "hi <@UBOT>")   # an envelope to the app
    await slack.wait_acked(ts)            # the app acked it
    slack.messages("C1")                  # what the channel shows
    await slack.stop()

Web API (``POST /api/<method>``, token in the ``Authorization`` header or the ``token``
field, form or JSON body): ``auth.test``, ``apps.connections.open`` (app token only),
``chat.postMessage``, ``chat.update``, ``reactions.add``, ``conversations.open``,
``users.info``, ``files.getUploadURLExternal`` + ``POST /upload/<file id>`` +
``files.completeUploadExternal`` (the three steps of ``files_upload_v2``). Files people
"share" are served at ``GET /files/<id>`` to the bot token only.

Limits enforced as Slack documents them: message text ≤ 40,000 characters
(``msg_too_long``), ≤ 50 blocks, section text ≤ 3,000, button text ≤ 75, action_id ≤ 255,
button value ≤ 2,000, ≤ 25 elements in an actions block (``invalid_blocks``); reaction names
``[a-z0-9_+'-]`` and one per user (``already_reacted``); only the bot's own messages can be
updated (``cant_update_message``); archived channels refuse posts (``is_archived``);
uploads over ``max_upload_bytes`` are refused.

Socket Mode: ``apps.connections.open`` returns ``ws://…/ws?ticket=…``; a connection gets
``hello``, then every envelope not yet acked (Slack redelivers unacked envelopes on the
next connection, ``retry_attempt`` counted), then new ones. An ack is
``{"envelope_id": …}``. ``disconnect()`` sends Slack's ``{"type": "disconnect"}`` (the client
opens a new connection); ``drop()`` closes the socket without a word.

Events API (``use_events_api(url)``): each envelope's payload is POSTed to ``url`` as Slack
does — JSON for events, a form with ``payload=`` for interactivity — signed with the signing
secret (``X-Slack-Signature: v0=<hmac-sha256 of "v0:<ts>:<body>">``,
``X-Slack-Request-Timestamp``); a 2xx answer is the ack; ``redeliver()`` sends the others
again with ``X-Slack-Retry-Num``. ``post_raw`` sends anything (attack tests).

Injection: ``rate_limit(method, retry_after, times)`` answers HTTP 429 with ``Retry-After``;
``fail(method, error, times, after)`` answers ``{"ok": false, "error": error}``; ``revoke()`` makes
every token ``token_revoked``; ``archive(channel)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientError, ClientSession, WSMsgType, web

from carapace.testing.fake_slack_api import (
    Call,
    Channel,
    Message,
    SlackState,
)

__all__ = ["Call", "Channel", "FakeSlack", "FakeSlackThread", "Message"]


SIGNING_SECRET = "8f742231b10e8888abcd9912ab85a5c1"


class FakeSlack(SlackState):
    """The fake Slack: the server on loopback, the Socket Mode side (or the Events API's
    signed POSTs, after ``use_events_api``) and the people in it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events_url: str | None = None
        self.signing_secret = SIGNING_SECRET
        self.http_statuses: list[int] = []  # of every Events API POST, in order
        self._http: ClientSession | None = None

    @property
    def api_url(self) -> str:
        """The Web API base URL (slack_sdk's ``base_url``)."""
        return f"{self.base}/api/"

    async def start(self) -> str:
        app = web.Application(client_max_size=self.max_upload_bytes * 2 + 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files/{file_id}", self._download)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.api_url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ set-up
    def add_channel(self, channel_id: str, kind: str = "channel", user: str | None = None) -> None:
        self.channels[channel_id] = Channel(channel_id, kind, user=user)

    def add_user(self, user_id: str, name: str) -> None:
        self.users[user_id] = name

    def archive(self, channel: str) -> None:
        self.channels[channel].archived = True

    def rate_limit(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def fail(self, method: str, error: str, times: int = 1, after: int = 0) -> None:
        """The next ``times`` calls of ``method`` answer ``error``, once ``after`` more calls
        have succeeded."""
        queue = self._fails.setdefault(method, [])
        queue.extend([[after, error]] + [[0, error] for _ in range(times - 1)])

    def revoke(self) -> None:
        self.revoked = True

    # ------------------------------------------------------------------ what it shows
    async def wait_for(self, cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
        """Wait (event-based) until ``cond()`` is truthy; returns its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = cond()
            if value:
                return value
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"fake slack: {what} not met within {timeout:g} s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    async def wait_acked(self, envelope_id: str, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: envelope_id in self.acks, timeout, f"ack of {envelope_id}")

    async def wait_connected(self, n: int = 1, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.connections >= n and self._sockets, timeout,
                            f"{n} socket connection(s)")  # fmt: skip

    # ------------------------------------------------------------------ the human's side
    def share_file(self, name: str, data: bytes, mimetype: str = "application/octet-stream"
                   ) -> dict[str, Any]:  # fmt: skip
        fid = f"F{next(self._ids):06d}"
        self.files[fid] = {"name": name, "data": data, "mimetype": mimetype, "title": name}
        return {"id": fid, "name": name, "title": name, "mimetype": mimetype, "size": len(data),
                "url_private": f"{self.base}/files/{fid}",
                "url_private_download": f"{self.base}/files/{fid}"}  # fmt: skip

    def history(self, channel: str, user: str, text: str) -> str:
        """A message from before the app was there (no event): e.g. a thread's root."""
        self.channels.setdefault(channel, Channel(channel, "channel"))
        msg = Message(channel, self._ts(), user, text)
        self.all_messages.append(msg)
        return msg.ts

    async def user_says(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> str:
        """A person posts; the app gets a ``message`` event (and ``app_mention`` when the
        text mentions the bot in a channel). Returns the message ts (= the envelope id of
        the ``message`` event)."""
        ch = self.channels.setdefault(channel, Channel(channel, "channel"))
        ts = self._ts()
        msg = Message(channel, ts, user, text, thread_ts, files=list(files or []))
        self.all_messages.append(msg)
        event: dict[str, Any] = {
            "type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
            "event_ts": ts, "channel_type": ch.kind, "team": self.team_id,
        }  # fmt: skip
        if thread_ts:
            event["thread_ts"] = thread_ts
            parent = self.message(channel, thread_ts)
            if parent is not None:
                event["parent_user_id"] = parent.user
        if files:
            event["subtype"] = "file_share"
            event["files"] = list(files)
        await self.send_event(event, envelope_id=ts)
        if f"<@{self.bot_user_id}>" in text and ch.kind != "im":
            mention = {k: v for k, v in event.items() if k not in ("channel_type", "subtype")}
            mention["type"] = "app_mention"
            await self.send_event(mention, envelope_id=f"{ts}-mention")
        return ts

    async def user_edits(self, channel: str, ts: str, text: str) -> str:
        msg = self.message(channel, ts)
        assert msg is not None
        msg.text, msg.edited = text, True
        edit_ts = self._ts()
        ch = self.channels[channel]
        inner = {"type": "message", "user": msg.user, "text": text, "ts": ts,
                 "edited": {"user": msg.user, "ts": edit_ts}}  # fmt: skip
        if msg.thread_ts:
            inner["thread_ts"] = msg.thread_ts
        event = {"type": "message", "subtype": "message_changed", "channel": channel,
                 "channel_type": ch.kind, "message": inner, "ts": edit_ts, "event_ts": edit_ts,
                 "hidden": True}  # fmt: skip
        return await self.send_event(event, envelope_id=f"{ts}-edit-{edit_ts}")

    async def click(self, channel: str, ts: str, index: int, user: str) -> str:
        """``user`` clicks button ``index`` of the bot's message ``ts``: a block_actions."""
        msg = self.message(channel, ts)
        assert msg is not None, f"no message {ts} in {channel}"
        button = msg.buttons()[index]
        eid = f"click-{next(self._ids)}"
        payload = {
            "type": "block_actions", "team": {"id": self.team_id}, "api_app_id": "AFAKE",
            "user": {"id": user, "username": self.users.get(user, user), "team_id": self.team_id},
            "container": {"type": "message", "message_ts": ts, "channel_id": channel,
                          "is_ephemeral": False, **({"thread_ts": msg.thread_ts}
                                                    if msg.thread_ts else {})},
            "channel": {"id": channel}, "trigger_id": f"trig-{eid}",
            "message": {"ts": ts, "text": msg.text, "blocks": msg.blocks, "user": msg.user,
                        **({"thread_ts": msg.thread_ts} if msg.thread_ts else {})},
            "actions": [{"type": "button", "action_id": button["action_id"],
                         "block_id": "b", "value": button.get("value", ""),
                         "text": button.get("text"), "action_ts": self._ts()}],
        }  # fmt: skip
        envelope = {"envelope_id": eid, "type": "interactive", "payload": payload,
                    "accepts_response_payload": False}  # fmt: skip
        await self._send_envelope(envelope)
        return eid

    async def send_event(self, event: dict[str, Any], *, envelope_id: str | None = None) -> str:
        eid = envelope_id or f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": eid, "type": "events_api", "accepts_response_payload": False,
            "retry_attempt": 0, "retry_reason": "",
            "payload": {"token": "verif", "team_id": self.team_id, "api_app_id": "AFAKE",
                        "event": event, "type": "event_callback", "event_id": f"Ev{eid}",
                        "event_time": int(time.time()),
                        "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id,
                                            "is_bot": True}]},
        }  # fmt: skip
        await self._send_envelope(envelope)
        return eid

    async def _send_envelope(self, envelope: dict[str, Any]) -> None:
        self.unacked[envelope["envelope_id"]] = envelope
        if self.events_url is not None:
            await self._post_envelope(envelope)
            return
        for ws in list(self._sockets):
            try:
                await ws.send_str(json.dumps(envelope))
                break
            except (ConnectionError, RuntimeError):
                continue
        self._poke()

    async def disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's own ``disconnect`` message: the client should open a new connection."""
        for ws in list(self._sockets):
            await ws.send_str(json.dumps({"type": "disconnect", "reason": reason}))

    async def drop(self) -> None:
        """Close every socket without a word (a network cut)."""
        for ws in list(self._sockets):
            await ws.close()

    # ------------------------------------------------------------------ events API
    def use_events_api(self, url: str, signing_secret: str = SIGNING_SECRET) -> None:
        """Deliver envelopes as Slack's Events API does: signed POSTs to ``url`` (the app's
        request URL) instead of the socket; a 2xx answer is the ack."""
        self.events_url, self.signing_secret = url, signing_secret

    def sign(self, body: bytes, timestamp: int | None = None,
             secret: str | None = None) -> dict[str, str]:  # fmt: skip
        ts = str(int(time.time()) if timestamp is None else timestamp)
        base = b"v0:" + ts.encode() + b":" + body
        mac = hmac.new((secret or self.signing_secret).encode(), base, hashlib.sha256)
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={mac.hexdigest()}"}

    def _request_body(self, envelope: dict[str, Any]) -> tuple[bytes, str]:
        if envelope.get("type") == "interactive":  # interactivity: a form with payload=
            body = urlencode({"payload": json.dumps(envelope["payload"])}).encode()
            return body, "application/x-www-form-urlencoded"
        return json.dumps(envelope["payload"]).encode(), "application/json"

    async def post_raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """POST bytes to the request URL as they are (attack tests): (status, text)."""
        assert self.events_url is not None
        if self._http is None:
            self._http = ClientSession()
        async with self._http.post(self.events_url, data=body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def _post_envelope(self, envelope: dict[str, Any]) -> None:
        body, ctype = self._request_body(envelope)
        headers = {"Content-Type": ctype, **self.sign(body)}
        retry = int(envelope.get("retry_attempt", 0))
        if retry:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = str(envelope.get("retry_reason") or "timeout")
        try:
            status, _text = await self.post_raw(body, headers)
        except (TimeoutError, OSError, ClientError):
            status = 0
        self.http_statuses.append(status)
        if 200 <= status < 300:
            self.unacked.pop(envelope["envelope_id"], None)
            self.acks.append(envelope["envelope_id"])
        self._poke()

    async def redeliver(self) -> None:
        """Slack's retry of every request not answered 2xx (``X-Slack-Retry-Num``)."""
        for envelope in list(self.unacked.values()):
            envelope["retry_attempt"] = int(envelope.get("retry_attempt", 0)) + 1
            envelope["retry_reason"] = "http_error"
            await self._post_envelope(envelope)

    # ------------------------------------------------------------------ socket mode
    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="bad ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections += 1
        await ws.send_str(json.dumps({"type": "hello", "num_connections": len(self._sockets),
                                      "connection_info": {"app_id": "AFAKE"},
                                      "debug_info": {"host": "fake"}}))  # fmt: skip
        for envelope in list(self.unacked.values()):  # Slack redelivers what was not acked
            if envelope.get("type") == "events_api":
                envelope["retry_attempt"] = int(envelope.get("retry_attempt", 0)) + 1
                envelope["retry_reason"] = "timeout"
            await ws.send_str(json.dumps(envelope))
        self._poke()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                eid = data.get("envelope_id") if isinstance(data, dict) else None
                if isinstance(eid, str) and eid in self.unacked:
                    del self.unacked[eid]
                    self.acks.append(eid)
                    self._poke()
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
            self._poke()
        return ws


class FakeSlackThread:
    """A ``FakeSlack`` on its own event loop in a thread, for code that runs its own loop
    (the ``carapace`` command line, a host started with ``asyncio.run``)::

        with FakeSlackThread() as slack:
            CliRunner().invoke(main, ["channels", "add", "slack", "--base-url", slack.api_url])
            slack.call(slack.fake.user_says("C1", "U1", "hi"))
    """

    def __init__(self, **kw: Any) -> None:
        import threading

        self.fake = FakeSlack(**kw)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="fake-slack")  # fmt: skip

    @property
    def api_url(self) -> str:
        return self.fake.api_url

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine of the fake on its loop and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> FakeSlackThread:
        self._thread.start()
        self.call(self.fake.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.fake.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
