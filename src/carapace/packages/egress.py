"""The registries-only egress of a package install: an HTTPS ``CONNECT`` proxy on a unix socket.

The install sandbox has no network of its own (an empty network namespace). Inside it,
``carapace.packages.sandboxed`` relays a loopback port to this socket, and pip and npm are
told to use ``http://127.0.0.1:<port>`` as their proxy. This proxy accepts only
``CONNECT <host>:443`` for the registry hosts in ``REGISTRY_HOSTS``; anything else is
answered ``403`` and logged. TLS is end to end (pip and npm check the registry's
certificate); the host only relays bytes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

from carapace.unixsock import bind_private, relay

logger = logging.getLogger(__name__)

REGISTRY_HOSTS = frozenset({"pypi.org", "files.pythonhosted.org", "registry.npmjs.org"})
MAX_HEAD = 8192
IDLE_S = 300.0


class RegistryProxy:
    """Serve ``CONNECT`` to the registries on ``path`` until ``close()``."""

    def __init__(self, path: Path, log: Callable[[str], None] = lambda _line: None) -> None:
        self.path = path
        self.log = log
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler, bind_and_activate=False)
        try:  # owner-only, never a process-wide umask change (unixsock.bind_private)
            bind_private(self.server.socket, path)
            self.server.server_activate()
        except BaseException:
            self.server.server_close()
            raise
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _handle(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            data = client.recv(1024)
            if not data:
                return
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        target = parts[1] if len(parts) == 3 else ""
        host, _, port = target.rpartition(":")
        if len(parts) != 3 or parts[0] != "CONNECT" or port != "443" or host not in REGISTRY_HOSTS:
            self.log(f"refused: {line[:200]}")
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((host, 443), timeout=30)
        except OSError as exc:
            self.log(f"unreachable: {host} ({exc})")
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self.log(f"connect: {host}")
        client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        relay(client, upstream, IDLE_S)
