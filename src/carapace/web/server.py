"""The web server inside the host process: uvicorn serving ``WebApp`` on the host's loop.

``carapace run`` calls ``start_web(host)`` after ``host.start()`` (nothing happens unless
``[web] enabled = true``) and ``stop()`` before ``host.stop()``. Signals stay the host's:
uvicorn's own handlers are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from collections.abc import Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from carapace.db import groups, messaging
from carapace.errors import ConfigError
from carapace.web.config import WebSettings, web_settings

if TYPE_CHECKING:
    from carapace.host.host import Host
    from carapace.web.app import WebApp

logger = logging.getLogger(__name__)


def ensure_hooks(db: sqlite3.Connection, ws: WebSettings, now: datetime) -> list[str]:
    """For each hook with an ``agent``: its chat (``webhook``/<name>, policy ``public``: the
    signature is the check) wired to that agent group, created when missing. Returns
    one line per problem (an unknown agent)."""
    problems: list[str] = []
    for hook in ws.hooks.values():
        if hook.agent is None:
            continue
        g = groups.get_agent_group_by_folder(db, hook.agent) or groups.get_agent_group(
            db, hook.agent
        )
        if g is None:
            problems.append(f"[web.hooks.{hook.name}] agent {hook.agent!r}: no such agent group")
            continue
        mg = messaging.get_messaging_group_by_platform(db, "webhook", hook.name)
        if mg is None:
            mg = messaging.create_messaging_group(
                db, "webhook", hook.name, name=f"webhook {hook.name}", is_group=False,
                unknown_sender_policy="public", now=now,
            )  # fmt: skip
        if messaging.get_wiring_for(db, mg.id, g.id) is None:
            messaging.create_wiring(db, mg.id, g.id, engage_mode="pattern", engage_pattern=".",
                                    now=now)  # fmt: skip
    return problems


class _Server:
    """A uvicorn server that leaves signal handling to the host."""

    def __init__(self, app: Any, ws: WebSettings) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        kwargs: dict[str, Any] = {}
        if ws.tls:
            kwargs.update(ssl_certfile=ws.tls_cert, ssl_keyfile=ws.tls_key)
        if ws.behind_proxy:
            kwargs.update(proxy_headers=True, forwarded_allow_ips="127.0.0.1")
        config = uvicorn.Config(app, host=ws.host, port=ws.port, lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2, **kwargs)  # fmt: skip
        self.server = Quiet(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind (an ``OSError`` here is the caller's to report), then serve on the socket."""
        cfg = self.server.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((cfg.host, cfg.port))
        except OSError:
            sock.close()
            raise
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                exc = self.task.exception()
                raise ConfigError(f"web server did not start: {exc or 'it exited'}")
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.task, 5)


class WebServer:
    def __init__(self, host: Host, ws: WebSettings) -> None:
        from carapace.web.app import WebApp

        self.host = host
        self.ws = ws
        self.app: WebApp = WebApp(host, ws)
        self._server = _Server(self.app.asgi, ws)
        self.port = 0

    @property
    def url(self) -> str:
        if self.ws.public_url:
            return self.ws.public_url
        scheme = "https" if self.ws.tls else "http"
        return f"{scheme}://{self.ws.host}:{self.port}"

    async def start(self) -> None:
        self.app.bind()
        for line in ensure_hooks(self.host.db, self.ws, self.host.now()):
            logger.error("webhook not wired: %s", line)
        self.port = await self._server.start()
        logger.info("web server at %s", self.url)

    async def stop(self) -> None:
        await self._server.stop()
        self.app.close()


def _events_need_web(host: Host) -> None:
    """Slack in events mode posts to this server: without it nothing would ever arrive, so
    the channel is failed, loudly (``channels list``, ``doctor``)."""
    if getattr(host.adapters.get("slack"), "mode", None) != "events":
        return
    from carapace.channels.registry import record_state

    reason = ("events mode needs the web server: set [web] enabled = true and point Slack's "
              "request URLs at https://<your host>/slack/events")  # fmt: skip
    logger.error("slack: %s", reason)
    record_state(host.home, "slack", "failed", reason)


async def start_web(host: Host) -> WebServer | None:
    """The web server when ``[web] enabled = true`` (None otherwise)."""
    ws = web_settings(host.settings, host.home)
    if not ws.enabled:
        _events_need_web(host)
        return None
    try:
        server = WebServer(host, ws)
    except ImportError as exc:
        raise ConfigError(
            f"[web] cannot start: starlette or uvicorn is missing from this install ({exc}); reinstall carapace"
        )
    try:
        await server.start()
    except OSError as exc:
        server.app.close()
        raise ConfigError(f"web server cannot listen on {ws.host}:{ws.port}: {exc.strerror or exc}")
    return server
