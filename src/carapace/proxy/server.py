"""The egress proxy: one unix socket per session, served by the host.

Routes (the runner's SDK clients use ``http://carapace-proxy/<provider>`` as base URL):

* ``/anthropic/<path>`` and ``/openai/<path>``: forwarded to the session's upstream for
  that provider (the group's ``base_url`` for its own provider, else the host's
  ``*_BASE_URL``, else the provider's API) with the host's key added and any key the
  client sent removed. Responses stream through chunk by chunk; usage is metered on the
  way and recorded; budgets are checked before each call; 429/529/5xx are retried.
* ``/_carapace/web_fetch``: the host fetches a URL for the agent (``runner/webfetch``),
  with the group's ``web``/``web_private`` settings as the host reads them.
* ``/_carapace/mcp/<name>``: the group's streamable-HTTP MCP server ``<name>``, at the URL
  in the host's DB (``mcp_route``).

Nothing a runner sends picks the upstream host: only the route's provider name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from carapace.proxy import budgets as bud
from carapace.proxy.http11 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    Head,
    Headers,
    HTTPError,
    chunk,
    encode_head,
    read_body,
    read_head,
)
from carapace.proxy.keys import KeyStore
from carapace.proxy.mcp_route import MCP_PATH, McpUpstreams, forward_mcp
from carapace.proxy.meter import Meter
from carapace.proxy.prices import PriceTable
from carapace.proxy.retry import RETRY_STATUSES, RetryPolicy, retry_after
from carapace.proxy.sockdir import SocketDir
from carapace.proxy.upstream import UpstreamPool, UpstreamResponse
from carapace.proxy.usage import UsageRecord, UsageStore
from carapace.runner.providers.base import PROVIDER_ALIASES  # not lazily: ~8 ms on the loop
from carapace.timefmt import iso, utcnow
from carapace.unixsock import private_unix_socket

logger = logging.getLogger(__name__)

PROVIDERS = ("anthropic", "openai")
DEFAULT_UPSTREAMS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
}
CLIENT_BASE = "http://carapace-proxy"
SANDBOX_SOCKET = "/run/carapace/proxy.sock"
WEB_FETCH_PATH = "/_carapace/web_fetch"
_DROP_REQUEST = frozenset({*HOP_BY_HOP, "authorization", "x-api-key", "api-key", "cookie"})
_MAX_FETCH_BYTES = 10 * 1024 * 1024
_MAX_FETCH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SessionRoute:
    """What one session's socket serves; built by the host from the DB, never the agent."""

    session_id: str
    agent_group_id: str
    group_name: str = ""
    upstreams: dict[str, str] = field(default_factory=dict)  # provider -> base URL
    web: bool = True
    web_private: bool = False
    mcp: McpUpstreams = field(default_factory=dict)  # HTTP MCP servers: name -> (url, headers)


def upstreams_for(provider: str | None, base_url: str | None, keys: KeyStore) -> dict[str, str]:
    """Each provider's upstream for a group: its own ``base_url`` for its own provider."""
    out = {p: keys.base_url(p) or DEFAULT_UPSTREAMS[p] for p in PROVIDERS}
    provider = (provider or "").lower()
    provider = PROVIDER_ALIASES.get(provider, provider)
    if provider == "claude":  # Claude Code (the Claude Agent SDK) speaks the Anthropic API
        provider = "anthropic"
    if provider in out and base_url:
        out[provider] = base_url
    return {p: url.rstrip("/") for p, url in out.items()}


def error_body(provider: str, kind: str, message: str) -> bytes:
    if provider == "anthropic":
        doc: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        doc = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return json.dumps(doc).encode()


Warn = Callable[[str, str], Awaitable[None] | None]


class EgressProxy:
    def __init__(
        self,
        keys: KeyStore,
        *,
        usage: UsageStore | None = None,
        db: sqlite3.Connection | None = None,
        prices: PriceTable | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], datetime] = utcnow,
        on_warning: Warn | None = None,
        socket_dir: Path | None = None,
    ) -> None:
        self.keys = keys
        self.usage = usage
        self.db = db
        self.prices = prices or PriceTable()
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.now = now
        self.on_warning = on_warning
        self.pool = UpstreamPool()
        self._dir = self._given_dir = socket_dir
        self._sockdir: SocketDir | None = None
        self._servers: dict[
            str, tuple[asyncio.Task[asyncio.AbstractServer], socket.socket, Path]
        ] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._conns: set[asyncio.Task[Any]] = set()  # connection handlers (ended at close)
        self._closing = False  # close() is cancelling them
        self.calls = 0

    # -- sockets ------------------------------------------------------------------------
    def socket_dir(self) -> Path:
        if self._dir is None:
            self._sockdir = SocketDir.create()  # also removes folders of ended hosts
            self._dir = self._sockdir.path
        self._dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self._dir, 0o700)
        return self._dir

    def open_session(self, route: SessionRoute) -> Path:
        """Listen for ``route``'s runner; returns the socket's host path (owner-only).

        The socket listens at once (connections wait in its backlog); serving starts on
        the event loop's next turn."""
        self._drop(route.session_id)
        path = self.socket_dir() / f"s{len(self._servers)}-{os.urandom(6).hex()}.sock"
        sock = private_unix_socket(path)  # never a process-wide umask change
        sock.listen(64)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            me = asyncio.current_task()
            if me is not None:
                self._conns.add(me)
            try:
                await self._serve(route, reader, writer)
            except asyncio.CancelledError:
                # ended by close() (_serve closed the writer): the handler returns. A
                # cancelled handler task is read with task.exception() by Python 3.11's
                # stream server, which raises and is logged as an error with a traceback.
                if not self._closing:
                    raise
            finally:
                if me is not None:
                    self._conns.discard(me)

        task = asyncio.get_running_loop().create_task(
            asyncio.start_unix_server(handle, sock=sock, limit=1 << 20)
        )
        self._servers[route.session_id] = (task, sock, path)
        return path

    def _drop(self, session_id: str) -> None:
        entry = self._servers.pop(session_id, None)
        if entry is None:
            return
        task, sock, path = entry
        if task.done() and not task.cancelled() and task.exception() is None:
            task.result().close()
        else:
            task.cancel()
            task.add_done_callback(_close_started)
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()

    def session_ended(self, session_id: str) -> None:
        """The session's runner exited: stop listening (open connections finish)."""
        self._drop(session_id)

    async def close(self) -> None:
        """Stop listening, end the connections still open (a runner's SDK keeps one open
        between calls; a handler left waiting on it outlives the loop), then the pool."""
        for sid in list(self._servers):
            self._drop(sid)
        conns = [t for t in self._conns if not t.done()]
        self._closing = True
        try:
            for task in conns:
                task.cancel()
            if conns:
                await asyncio.gather(*conns, return_exceptions=True)
        finally:
            self._closing = False
        self.pool.close()
        self.release_dir()

    def release_dir(self) -> None:
        """Remove the socket folder (a host closed without ``close()`` leaves it to the
        next host's sweep)."""
        if self._sockdir is not None:
            self._sockdir.close()
        elif self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.rmdir()
        # forgotten: a host started again makes a new locked folder (it once made the old
        # one again, empty and without its lock, and left it behind at its next stop)
        self._dir, self._sockdir = self._given_dir, None

    # -- connections ----------------------------------------------------------------------
    async def _serve(
        self, route: SessionRoute, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    break
                parts = head.start.split(" ")
                if len(parts) != 3:
                    raise HTTPError("bad request line")
                method, target = parts[0], parts[1]
                body = await read_body(reader, head)
                await self._dispatch(route, method, target, head, body, writer)
                if not head.keep_alive():
                    break
        except (HTTPError, ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.debug("proxy connection of session %s ended: %s", route.session_id, exc)
        except Exception:
            logger.exception("proxy: unexpected error serving session %s", route.session_id)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _dispatch(
        self,
        route: SessionRoute,
        method: str,
        target: str,
        head: Head,
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        path = target.split("?", 1)[0]
        if path == WEB_FETCH_PATH and method == "POST":
            await self._web_fetch(route, body, writer)
            return
        if path.startswith(MCP_PATH):
            await forward_mcp(self.pool, route.mcp, route.web_private, route.session_id, method,
                              target, head, body, writer)  # fmt: skip
            return
        provider, _, rest = target.lstrip("/").partition("/")
        if provider not in PROVIDERS:
            await _send(writer, 404, "application/json", b'{"error":"no such route"}')
            return
        upstream = route.upstreams.get(provider)
        if not upstream:
            await _send(writer, 403, "application/json",
                        error_body(provider, "permission_error", "provider not allowed"))  # fmt: skip
            return
        await self._model_call(route, provider, f"{upstream}/{rest}", method, head, body, writer)

    # -- model calls ----------------------------------------------------------------------
    def _refusal(self, route: SessionRoute) -> str | None:
        if self.db is None or self.usage is None:
            return None
        budget = bud.effective_budget(self.db, route.agent_group_id)
        if budget.empty:
            return None
        for standing in bud.standings(budget, self.usage, route.agent_group_id, self.now()):
            if standing.used >= standing.limit:
                name = route.group_name or route.agent_group_id
                return bud.refusal_text(name, route.agent_group_id, standing)
        return None

    def _after_call(self, route: SessionRoute) -> None:
        """Warn the group's owner/admins once per period when a limit's share is crossed
        (decided before the reply ends; the message is sent in the background)."""
        if self.db is None or self.usage is None or self.on_warning is None:
            return
        budget = bud.effective_budget(self.db, route.agent_group_id)
        if budget.empty:
            return
        share = budget.warn_share or bud.DEFAULT_WARN_SHARE
        group = route.agent_group_id
        for s in bud.standings(budget, self.usage, group, self.now()):
            key = (group, s.name, s.period_key)
            if s.share >= share and key not in self._warned:
                self._warned.add(key)
                name = route.group_name or group
                state = (
                    "is reached: further model calls are refused"
                    if s.share >= 1 else "is used; at 100% model calls are refused"
                )  # fmt: skip
                text = (
                    f"Budget warning for {name}: {s.share:.0%} of the {s.describe()} {state}. "
                    f"Raise it with `carapace admin budgets set --scope {group} "
                    f"--{s.name.replace('_', '-')} N`."
                )
                result = self.on_warning(group, text)
                if result is not None:
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def _request(
        self, provider: str, head: Head, body: bytes
    ) -> tuple[Headers, bytes, str | None, bool]:
        headers: Headers = [(k, v) for k, v in head.headers if k.lower() not in _DROP_REQUEST]
        auth = self.keys.auth_header(provider)
        if auth is not None:
            headers.append(auth)
        model: str | None = None
        stream = False
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            model = doc.get("model") if isinstance(doc.get("model"), str) else None
            stream = doc.get("stream") is True
            if provider == "openai" and stream:
                opts = doc.get("stream_options")
                opts = dict(opts) if isinstance(opts, dict) else {}
                if opts.get("include_usage") is not True:
                    opts["include_usage"] = True
                    doc["stream_options"] = opts
                    body = json.dumps(doc).encode()
        return headers, body, model, stream

    async def _model_call(
        self,
        route: SessionRoute,
        provider: str,
        url: str,
        method: str,
        head: Head,
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.calls += 1
        refusal = self._refusal(route)
        if refusal is not None:
            logger.warning("session %s: %s", route.session_id, refusal)
            await _send(writer, 402, "application/json",
                        error_body(provider, "budget_exceeded", refusal))  # fmt: skip
            return
        headers, body, model, stream = self._request(provider, head, body)
        started = time.monotonic()
        resp: UpstreamResponse | None = None
        problem = ""
        waited = 0.0
        for attempt in range(self.retry.max_tries):
            try:
                resp = await self.pool.request(method, url, headers, body)
            except (OSError, HTTPError, TimeoutError) as exc:
                resp = None
                problem = f"unreachable ({type(exc).__name__}: {exc})"
            if resp is not None and resp.status not in RETRY_STATUSES:
                break
            delay = self.retry.backoff(attempt)
            if resp is not None:
                problem = f"answered {resp.status}"
                asked = retry_after(resp.head, self.now())
                delay = asked if asked is not None else delay
                async for _ in resp.body:  # drain, so the connection can be reused
                    pass
            last = attempt == self.retry.max_tries - 1
            if last or delay > self.retry.max_delay_s or waited + delay > self.retry.max_total_s:
                tries = attempt + 1
                message = (
                    f"{provider} API {problem} after {tries} tr{'y' if tries == 1 else 'ies'}"
                    f" over {waited:.0f}s; giving up"
                )
                logger.warning("session %s: %s", route.session_id, message)
                status = resp.status if resp is not None else 502
                self._record(route, provider, model, None, started, status, stream)
                await _send(writer, status, "application/json",
                            error_body(provider, "upstream_error", message))  # fmt: skip
                return
            logger.info("session %s: %s API %s; retry in %.1fs", route.session_id, provider,
                        problem, delay)  # fmt: skip
            waited += delay
            await self.sleep(delay)
        assert resp is not None
        await self._forward(route, provider, model, stream, started, resp, writer)

    async def _forward(
        self,
        route: SessionRoute,
        provider: str,
        model: str | None,
        stream: bool,
        started: float,
        resp: UpstreamResponse,
        writer: asyncio.StreamWriter,
    ) -> None:
        length = None if resp.head.chunked else resp.head.length
        out: Headers = [(k, v) for k, v in resp.head.headers if k.lower() not in HOP_BY_HOP]
        if length is not None:
            out.append(("Content-Length", str(length)))
        else:
            out.append(("Transfer-Encoding", "chunked"))
        ctype = (resp.head.get("content-type") or "").lower()
        meter = Meter(provider, streaming="text/event-stream" in ctype)
        writer.write(encode_head(f"HTTP/1.1 {resp.status} {resp.reason}".rstrip(), out))
        recorded = False
        sent = 0

        def record() -> None:
            # before the client sees the end of the reply, so the row is never behind it
            nonlocal recorded
            recorded = True
            counts = meter.finish()
            self._record(route, provider, counts.model or model, counts, started,
                         resp.status, stream)  # fmt: skip
            self._after_call(route)

        try:
            async for data in resp.body:
                meter.feed(data)
                sent += len(data)
                if length is not None and sent >= length:
                    record()
                writer.write(data if length is not None else chunk(data))
                await writer.drain()
            if not recorded:
                record()
            if length is None:
                writer.write(LAST_CHUNK)
            await writer.drain()
        finally:
            if not recorded:
                record()

    def _record(
        self,
        route: SessionRoute,
        provider: str,
        model: str | None,
        counts: Any,
        started: float,
        status: int,
        stream: bool,
    ) -> None:
        if self.usage is None:
            return
        i = counts.input_tokens if counts else 0
        o = counts.output_tokens if counts else 0
        cr = counts.cache_read if counts else 0
        cw = counts.cache_write if counts else 0
        cost = self.prices.cost(provider, model or "", i, o, cr, cw) if counts else None
        self.usage.record(
            UsageRecord(
                at=iso(self.now()), agent_group_id=route.agent_group_id,
                session_id=route.session_id, provider=provider, model=model,
                input_tokens=i, output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw,
                cost_usd=cost, latency_ms=(time.monotonic() - started) * 1000, status=status,
                streamed=stream,
            )
        )  # fmt: skip

    # -- web fetch ------------------------------------------------------------------------
    async def _web_fetch(
        self, route: SessionRoute, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        from carapace.runner import webfetch
        from carapace.runner.providers.base import ToolResult

        try:
            doc = json.loads(body)
            url = str(doc["url"])
            max_chars = max(1, int(doc.get("max_chars", 20_000)))
            max_bytes = max(1, min(_MAX_FETCH_BYTES, int(doc.get("max_bytes", 2_000_000))))
            timeout_s = max(0.1, min(_MAX_FETCH_TIMEOUT_S, float(doc.get("timeout_s", 30))))
        except (ValueError, KeyError, TypeError):
            await _send(writer, 400, "application/json", b'{"error":"bad web_fetch request"}')
            return
        if not route.web:
            result = ToolResult("Web access is disabled for this agent group.", is_error=True)
        else:
            result = await asyncio.to_thread(
                webfetch.fetch, url, max_chars=max_chars, max_bytes=max_bytes,
                timeout_s=timeout_s, allow_private=route.web_private,
            )  # fmt: skip
        payload = json.dumps({"content": result.content, "is_error": result.is_error})
        await _send(writer, 200, "application/json", payload.encode())


def _close_started(task: asyncio.Task[asyncio.AbstractServer]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _send(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
    reasons = {200: "OK", 400: "Bad Request", 402: "Payment Required", 403: "Forbidden",
               404: "Not Found", 502: "Bad Gateway"}  # fmt: skip
    headers: Headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
    if status >= 400:
        headers.append(("x-should-retry", "false"))
    writer.write(encode_head(f"HTTP/1.1 {status} {reasons.get(status, 'Error')}", headers) + body)
    await writer.drain()
