"""A real MCP server for tests, written with the ``mcp`` package (stdio or streamable HTTP).

``python -m carapace.testing.mcp_server [--name NAME]`` serves stdio; ``serve_http()`` runs
the same tools over streamable HTTP on a loopback port in a thread. Tools: ``echo(text)``,
``add(a, b)``, ``image()`` (a 1×1 PNG), ``whereami()`` (cwd, sandbox marker, PID),
``fail(message)`` (a tool error), ``crash()`` (the process exits at once; stdio only).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def build(name: str = "testsrv") -> Any:
    server = MCPServer(name, log_level="WARNING", instructions="Echo repeats; add adds.")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return f"echo: {text}"

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @server.tool()
    def image() -> Image:
        """A 1x1 PNG image."""
        return Image(data=PNG_1X1, format="png")

    @server.tool()
    def whereami() -> str:
        """Where the server runs."""
        return (
            f"cwd={os.getcwd()} sandbox={os.environ.get('CARAPACE_SANDBOX', '')} pid={os.getpid()}"
        )

    @server.tool()
    def fail(message: str) -> str:
        """Raise a tool error."""
        raise ToolError(message)

    @server.tool()
    def crash() -> str:
        """Exit the server process at once."""
        os._exit(3)

    return server


@contextlib.contextmanager
def serve_http(name: str = "webmcp") -> Iterator[str]:
    """Serve the tools over streamable HTTP on 127.0.0.1; yields the endpoint URL."""
    import uvicorn

    app = build(name).streamable_http_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="testsrv")
    args = parser.parse_args(argv)
    print(f"test MCP server {args.name} starting", file=sys.stderr, flush=True)
    build(args.name).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
