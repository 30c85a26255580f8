"""Connections to the provider APIs: keep-alive, TLS with the host name checked.

``UpstreamPool.request`` sends one request and returns the response head with a body
iterator; the connection goes back to the pool only after its body was read to the end.
A request on a reused connection that fails before any response byte is sent again once
on a fresh connection (the server may have closed an idle connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from carapace.proxy.http11 import (
    LAST_CHUNK,
    Head,
    Headers,
    HTTPError,
    encode_head,
    iter_body,
    no_body,
    read_head,
    status_of,
)

_Key = tuple[str, str, int, str]  # scheme, host name, port, pinned address ("" = resolve)
IDLE_PER_HOST = 8


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class UpstreamResponse:
    status: int
    reason: str
    head: Head
    body: AsyncIterator[bytes]
    _release: list[_Conn] = field(default_factory=list)


class UpstreamPool:
    def __init__(self, *, connect_timeout_s: float = 30.0) -> None:
        self._idle: dict[_Key, list[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.connect_timeout_s = connect_timeout_s

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _open(self, key: _Key) -> _Conn:
        scheme, host, port, pinned = key
        tls = self._context() if scheme == "https" else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                pinned or host,
                port,
                ssl=tls,
                server_hostname=host if tls else None,
                limit=1 << 20,
            ),
            self.connect_timeout_s,
        )
        return _Conn(reader, writer)

    def _take(self, key: _Key) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return None

    def _give_back(self, key: _Key, conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.close()

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes, *, connect_to: str = ""
    ) -> UpstreamResponse:
        """``connect_to``: the address to connect to (already checked by the caller), instead
        of resolving the URL's host again; TLS still checks the certificate for the name."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(f"bad upstream URL {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        key: _Key = (scheme, parts.hostname, port, connect_to)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        out = [("Host", host_header), *headers, ("Content-Length", str(len(body)))]
        data = encode_head(f"{method} {target} HTTP/1.1", out) + body
        for attempt in (0, 1):
            conn = self._take(key) if attempt == 0 else None
            if conn is None:
                conn = await self._open(key)
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                head = await read_head(conn.reader)
                if head is None:
                    raise HTTPError("upstream closed the connection")
            except (OSError, HTTPError):
                conn.close()
                if conn.reused and attempt == 0:
                    continue
                raise
            status, reason = status_of(head)
            return UpstreamResponse(
                status, reason, head, self._body(key, conn, method, status, head)
            )
        raise HTTPError("unreachable")  # pragma: no cover

    async def _body(
        self, key: _Key, conn: _Conn, method: str, status: int, head: Head
    ) -> AsyncIterator[bytes]:
        done = False
        try:
            if not no_body(method, status):
                until_close = not head.chunked and head.length is None
                async for data in iter_body(conn.reader, head, until_close=until_close):
                    yield data
                if until_close:
                    conn.close()
                    return
            done = True
        finally:
            if done and head.keep_alive():
                self._give_back(key, conn)
            else:
                conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


__all__ = ["LAST_CHUNK", "UpstreamPool", "UpstreamResponse"]
