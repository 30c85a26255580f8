"""The web server's ASGI app (Starlette): login, the web chat, the dashboard, webhooks.

Runs inside the host process (``carapace.web.server``). Every handler's work runs on the
host's event loop (``WebApp.on_host``): the host's DB connection and adapters are used from
that loop only. Starlette's test client runs the app on a loop of its own; the same hop makes
that work too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from carapace.db import users
from carapace.web import auth
from carapace.web.channel import WebChannel
from carapace.web.config import WebSettings
from carapace.web.html import esc, page
from carapace.web.store import WebStore

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger(__name__)

T = TypeVar("T")
BODY_SLACK = 64 * 1024
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer makes Chromium send Origin: null
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


class BodyTooLarge(Exception):
    pass


@dataclass
class Req:
    """What a handler sees of a request (read on the server's loop, handled on the host's)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes
    params: dict[str, str]

    def form(self) -> dict[str, str]:
        if "application/x-www-form-urlencoded" not in self.headers.get("content-type", ""):
            return {}
        try:
            parsed = parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return {}
        return {k: v[0] for k, v in parsed.items() if v}

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    @property
    def wants_html(self) -> bool:
        return not self.path.startswith("/api/")


@dataclass(frozen=True)
class WebUser:
    name: str
    id: str
    csrf: str
    operator: bool  # owner or global admin: the dashboard and its actions


Handler = Callable[[Req, WebUser], Awaitable[Response]]


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def refusal(req: Req, status: int, message: str) -> Response:
    if req.wants_html and req.method in auth.SAFE_METHODS:
        return html(page("Not allowed" if status != 404 else "Not found",
                         f'<p class="error" role="alert">{esc(message)}</p>'), status)  # fmt: skip
    return JSONResponse({"error": message}, status_code=status)


class WebApp:
    def __init__(self, host: Host, ws: WebSettings) -> None:
        self.host = host
        self.ws = ws
        self.loop: asyncio.AbstractEventLoop | None = None
        self._store: WebStore | None = None
        self.closers: list[Callable[[], None]] = []
        from carapace.web import routes_chat, routes_dash, routes_hooks, routes_slack

        routes: list[Route] = [
            Route("/static/{name}", self._static, methods=["GET"]),
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/login", self.endpoint(self._login_page, auth=False), methods=["GET"]),
            Route("/login", self.endpoint(self._login, auth=False), methods=["POST"]),
            Route("/logout", self.endpoint(self._logout), methods=["POST"]),
        ]
        routes += routes_chat.routes(self)
        routes += routes_dash.routes(self)
        routes += routes_hooks.routes(self)
        routes += routes_slack.routes(self)
        self.asgi = Starlette(routes=routes)

    # -- the hop to the host's loop ------------------------------------------------------------
    def bind(self) -> None:
        """Remember the host's loop (call on it)."""
        self.loop = asyncio.get_running_loop()

    async def on_host(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop
        if loop is None or loop is asyncio.get_running_loop():
            return await coro
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(fut)

    @property
    def store(self) -> WebStore:
        if self._store is None:
            self._store = WebStore.open(self.host.home)
        return self._store

    def close(self) -> None:
        for fn in self.closers:
            fn()
        self.closers.clear()
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def chat(self) -> WebChannel | None:
        adapter = self.host.adapters.get("web")
        return adapter if isinstance(adapter, WebChannel) else None

    def now(self) -> datetime:
        return self.host.now()

    # -- request plumbing -------------------------------------------------------------------------
    async def read(self, request: Request, limit: int) -> Req:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        return Req(request.method, request.url.path, dict(request.query_params),
                   {k.lower(): v for k, v in request.headers.items()}, dict(request.cookies),
                   b"".join(chunks), {k: str(v) for k, v in request.path_params.items()})  # fmt: skip

    def endpoint(
        self, fn: Handler | Callable[[Req, WebUser | None], Awaitable[Response]], *,
        auth: bool = True, operator: bool = False, limit: int | None = None,
    ) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
        max_body = limit if limit is not None else self.ws.max_upload_bytes * 4 // 3 + BODY_SLACK

        async def run(request: Request) -> Response:
            try:
                req = await self.read(request, max_body)
            except BodyTooLarge:
                return JSONResponse({"error": "request body too large"}, status_code=413)
            return await self.on_host(self._guarded(fn, req, auth, operator))

        return run

    async def _guarded(self, fn: Any, req: Req, need_auth: bool, operator: bool) -> Response:
        try:
            if not need_auth:
                resp: Response = await fn(req, None)
                return resp
            user = self.current_user(req)
            if user is None:
                if req.wants_html and req.method in auth.SAFE_METHODS:
                    return html(page("Sign in", '<p class="error" role="alert">You are not '
                                     "signed in. Run <code>carapace web login-link</code> on the "
                                     "host and open the link it prints.</p>"), 401)  # fmt: skip
                return JSONResponse({"error": "not signed in"}, status_code=401)
            if req.method not in auth.SAFE_METHODS:
                if not auth.origin_ok(
                    req.headers.get("origin"), req.headers.get("host"), self.ws.public_url
                ):
                    return refusal(req, 403, "cross-site request refused")
                given = req.headers.get("x-csrf-token") or req.form().get("csrf")
                if not auth.csrf_ok(user.csrf, given):
                    return refusal(req, 403, "missing or wrong CSRF token")
            if operator and not user.operator:
                return refusal(req, 403, "this page is for the owner and admins")
            resp = await fn(req, user)
            return resp
        except Exception:
            logger.exception("web request %s %s failed", req.method, req.path)
            return refusal(req, 500, "internal error (see the host's log)")

    def current_user(self, req: Req) -> WebUser | None:
        sess = self.store.browser_session(req.cookies.get(auth.COOKIE), self.now())
        if sess is None or not sess.user_id.startswith("web:"):
            return None
        db = self.host.db
        if users.get_user(db, sess.user_id) is None:  # deleted since: the session is void
            return None
        op = users.has_role(db, sess.user_id, "owner") or users.has_role(
            db, sess.user_id, "admin", None, exact=True
        )
        return WebUser(sess.user_id[4:], sess.user_id, sess.csrf, op)

    def render(self, title: str, body: str, user: WebUser, current: str = "") -> HTMLResponse:
        return html(page(title, body, user=user.name, csrf=user.csrf, operator=user.operator,
                         current=current))  # fmt: skip

    # -- basic routes -----------------------------------------------------------------------------
    async def _static(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
            return Response("not found", status_code=404)
        try:
            data = resources.files("carapace.web").joinpath("static", name).read_bytes()
        except (FileNotFoundError, OSError):
            return Response("not found", status_code=404)
        return Response(data, media_type=STATIC_TYPES[suffix],
                        headers={"cache-control": "no-cache", **SECURITY_HEADERS})  # fmt: skip

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def _login_page(self, req: Req, _: WebUser | None) -> Response:
        token = req.query.get("token", "")
        uid = self.store.peek_login_link(token, self.now()) if token else None
        if uid is None:
            return html(page("Sign in", '<p class="error" role="alert">This sign-in link is not '
                             "valid: it was used already, has expired, or is mistyped. Run "
                             "<code>carapace web login-link</code> for a new one.</p>"), 400)  # fmt: skip
        body = (f'<form method="post" action="/login"><input type="hidden" name="token" '
                f'value="{esc(token)}"><p>Sign in as <strong>{esc(uid)}</strong>?</p>'
                '<button type="submit" autofocus>Sign in</button></form>')  # fmt: skip
        return html(page("Sign in", body))

    async def _login(self, req: Req, _: WebUser | None) -> Response:
        token = req.form().get("token", "")
        if not auth.origin_ok(
            req.headers.get("origin"), req.headers.get("host"), self.ws.public_url
        ):
            return refusal(req, 403, "cross-site request refused")
        opened = (
            self.store.use_login_link(token, self.now(), self.ws.session_days) if token else None
        )
        if opened is None:
            return html(page("Sign in", '<p class="error" role="alert">This sign-in link is not '
                             "valid any more.</p>"), 400)  # fmt: skip
        sid, uid = opened
        logger.info("web user %s signed in", uid)
        resp = RedirectResponse("/", status_code=303)
        resp.headers.append("set-cookie", auth.cookie_header(
            sid, secure=self.ws.secure_cookies, max_age=int(self.ws.session_days * 86400)))  # fmt: skip
        return resp

    async def _logout(self, req: Req, user: WebUser) -> Response:
        self.store.end_browser_session(req.cookies.get(auth.COOKIE, ""))
        resp = RedirectResponse("/login", status_code=303)
        resp.headers.append("set-cookie", auth.cookie_header(
            "", secure=self.ws.secure_cookies, max_age=0))  # fmt: skip
        return resp
