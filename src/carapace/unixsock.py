"""Owner-only Unix socket servers (the CLI channel's and the admin socket), and a loopback
TCP port relayed to a Unix socket (for clients that only speak TCP to a proxy socket)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def bind_private(sock: socket.socket, path: Path) -> None:
    """Bind the Unix socket ``sock`` at ``path`` with mode 0600 (a stale socket file
    unlinked first), without touching the process's umask. The umask is process-wide: a
    temporary ``umask(0o177)`` around a bind (as before) gave a folder made meanwhile by
    another thread mode 0600, so a session folder made during a runner's start could not be
    entered by its runner, which failed at every start. Linux gives the bound file the mode
    of the socket's own inode, set here first with ``fchmod``."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.fchmod(sock.fileno(), 0o600)
    sock.bind(str(path))
    os.chmod(path, 0o600)  # where fchmod of a socket does not carry over (not Linux)


def private_unix_socket(path: Path) -> socket.socket:
    """A stream socket bound owner-only at ``path`` (:func:`bind_private`), not listening."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        bind_private(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_private_server(
    handler: Handler, path: Path, *, limit: int
) -> asyncio.AbstractServer:
    """Serve ``handler`` on ``path`` with mode 0600, a stale socket file unlinked first."""
    sock = private_unix_socket(path)
    try:
        return await asyncio.start_unix_server(handler, sock=sock, limit=limit)
    except BaseException:
        sock.close()
        raise


def relay(a: socket.socket, b: socket.socket, idle_s: float = 300.0) -> None:
    """Copy bytes both ways until either side closes (or ``idle_s`` without traffic), then
    close both."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], idle_s)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


def forward_loopback(sock_path: str, *, idle_s: float = 300.0, name: str = "relay") -> int:
    """A 127.0.0.1 port whose connections are relayed to the Unix socket ``sock_path`` (each
    in a daemon thread, for the life of the process); returns the port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(sock_path)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=relay, args=(conn, up, idle_s), daemon=True).start()

    threading.Thread(target=serve, name=name, daemon=True).start()
    return int(listener.getsockname()[1])
