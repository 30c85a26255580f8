"""``POST /hooks/<name>`` (a machine's message) and ``GET /hooks/<name>/replies`` (its
replies, when the hook has no callback URL). See ``carapace.web.hooks``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from carapace.channels.base import InboundEvent, InboundMessage
from carapace.jsonutil import dumps, loads_or
from carapace.timefmt import iso, new_id
from carapace.web.hooks import SignatureError, WebhookChannel, check_signature

if TYPE_CHECKING:
    from carapace.web.app import Req, WebApp

EVENT_MAX = 100


def routes(app: WebApp) -> list[Route]:
    h = HookRoutes(app)
    return [
        Route("/hooks/{name}", h.post, methods=["POST"]),
        Route("/hooks/{name}/replies", h.replies, methods=["GET"]),
    ]


class HookRoutes:
    def __init__(self, app: WebApp) -> None:
        self.app = app

    def channel(self) -> WebhookChannel | None:
        adapter = self.app.host.adapters.get("webhook")
        return adapter if isinstance(adapter, WebhookChannel) else None

    async def _read(self, request: Request) -> Req | Response:
        from carapace.web.app import BodyTooLarge

        hook = self.app.ws.hooks.get(str(request.path_params["name"]))
        if hook is None:  # refused before reading a byte of the body
            return JSONResponse({"error": "no such hook"}, status_code=404)
        limit = hook.max_body_bytes
        try:
            return await self.app.read(request, limit)
        except BodyTooLarge:
            return JSONResponse({"error": "body over the hook's size limit"}, status_code=413)

    def _check(self, req: Req) -> str | None:
        """None when the request is signed right and fresh; else the refusal's reason (and
        status through ``SignatureError``)."""
        ch = self.channel()
        name = req.params["name"]
        hook = self.app.ws.hooks.get(name)
        if ch is None or hook is None:
            raise SignatureError(404, "no such hook")
        check_signature(ch.secret(name), req.headers.get("x-carapace-timestamp"),
                        req.headers.get("x-carapace-signature"), req.body, self.app.now(),
                        hook.replay_window_s)  # fmt: skip
        return None

    async def post(self, request: Request) -> Response:
        got = await self._read(request)
        if isinstance(got, Response):
            return got
        return await self.app.on_host(self._post(got))

    async def _post(self, req: Req) -> Response:
        try:
            self._check(req)
        except SignatureError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        name = req.params["name"]
        hook = self.app.ws.hooks[name]
        sig = req.headers.get("x-carapace-signature", "")
        if not self.app.store.remember_signature(
            f"{name}:{sig}", self.app.now(), hook.replay_window_s
        ):
            return JSONResponse({"error": "replayed request"}, status_code=409)
        event_name = (req.headers.get("x-carapace-event") or "post")[:EVENT_MAX]
        text = req.body.decode("utf-8", errors="replace")
        payload = loads_or(text, None) if text.strip() else None
        content = {"source": name, "event": event_name,
                   "payload": payload if payload is not None else text}  # fmt: skip
        eid = new_id("hook", self.app.now())
        ch = self.channel()
        assert ch is not None
        event = InboundEvent("webhook", name, None,
                             InboundMessage(eid, "webhook", dumps(content), iso(self.app.now()),
                                            is_mention=None, is_group=False))  # fmt: skip
        result = await self.app.host.route(event)
        routed = [r.message_id for r in result.routed]
        if not routed:
            return JSONResponse({"error": f"not routed: {result.dropped_reason or 'no agent'}",
                                 "id": eid}, status_code=422)  # fmt: skip
        return JSONResponse({"id": eid, "routed": routed}, status_code=202)

    async def replies(self, request: Request) -> Response:
        got = await self._read(request)
        if isinstance(got, Response):
            return got
        return await self.app.on_host(self._replies(got))

    async def _replies(self, req: Req) -> Response:
        try:
            self._check(req)
        except SignatureError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        ch = self.channel()
        assert ch is not None
        after = req.query.get("after", "0")
        return JSONResponse(
            {"replies": ch.replies(req.params["name"], int(after) if after.isdigit() else 0)}
        )
