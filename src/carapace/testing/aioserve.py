"""An aiohttp application on loopback for the fake platforms and test drivers."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve_app(
    app: web.Application, port: int = 0, **runner_kw: Any
) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``127.0.0.1:port`` (0: any free port); returns the runner (call
    ``cleanup()`` to stop) and the port it listens on."""
    runner = web.AppRunner(app, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server: Any = site._server
    assert server is not None and server.sockets
    return runner, int(server.sockets[0].getsockname()[1])
