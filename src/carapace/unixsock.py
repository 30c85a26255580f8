"""Owner-only Unix socket servers (the CLI channel's and the admin socket)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_private_server(
    handler: Handler, path: Path, *, limit: int
) -> asyncio.AbstractServer:
    """Serve ``handler`` on ``path`` with mode 0600, a stale socket file unlinked first."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handler, path=str(path), limit=limit)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server
