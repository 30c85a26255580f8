"""``POST /slack/events``: Slack's Events API and interactivity requests for the Slack
adapter in events mode (``carapace.channels.slack``). The adapter (through slack-bolt)
checks the signature and timestamp before anything is acted on; this route only caps the
body, hops to the host's loop and hands the bytes over."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from carapace.web.app import WebApp

#: Slack's event and interaction payloads are small; anything bigger is not Slack.
MAX_BODY = 1 << 20
PATH = "/slack/events"


def routes(app: WebApp) -> list[Route]:
    async def post(request: Request) -> Response:
        from carapace.web.app import BodyTooLarge

        adapter: Any = app.host.adapters.get("slack")
        if adapter is None or getattr(adapter, "mode", None) != "events":
            return JSONResponse({"error": "slack events are not configured"}, status_code=404)
        try:
            req = await app.read(request, MAX_BODY)
        except BodyTooLarge:
            return JSONResponse({"error": "body too large"}, status_code=413)
        status, headers, body = await app.on_host(adapter.http_request(req.body, req.headers))
        return Response(body, status_code=status, headers=headers)

    return [Route(PATH, post, methods=["POST"])]
