"""Just enough HTTP/1.1 over asyncio streams for the proxy, both sides.

Bodies are never gathered whole on the response path: ``iter_body`` yields chunks as they
arrive (``Content-Length``, ``chunked`` or until close). Request bodies are read whole
(they are JSON the SDKs send with a length; the cap is ``MAX_REQUEST_BODY``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from carapace.errors import CarapaceError

MAX_HEAD = 64 * 1024
MAX_REQUEST_BODY = 32 * 1024 * 1024
READ_CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "host",
    }
)  # fmt: skip


class HTTPError(CarapaceError):
    """A malformed or oversized HTTP message, or a connection that closed mid-message."""


Headers = list[tuple[str, str]]


@dataclass
class Head:
    start: str  # request line or status line
    headers: Headers

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.get("transfer-encoding") or "").lower()

    @property
    def length(self) -> int | None:
        raw = self.get("content-length")
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            raise HTTPError(f"bad content-length {raw!r}")
        if value < 0:
            raise HTTPError(f"bad content-length {raw!r}")
        return value

    def keep_alive(self) -> bool:
        conn = (self.get("connection") or "").lower()
        return "close" not in conn


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None when the peer closed cleanly before one."""
    lines: list[str] = []
    size = 0
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not lines:
                return None
            raise HTTPError("connection closed inside a message head")
        except asyncio.LimitOverrunError:
            raise HTTPError("header line too long")
        size += len(raw)
        if size > MAX_HEAD:
            raise HTTPError("message head too large")
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            if not lines:
                continue  # tolerate stray CRLF between messages
            break
        lines.append(line)
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return Head(lines[0], headers)


async def iter_body(
    reader: asyncio.StreamReader, head: Head, *, until_close: bool = False
) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive (de-chunked)."""
    if head.chunked:
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise HTTPError("connection closed inside a chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError("bad chunk size")
            if size == 0:
                while (await reader.readline()).strip():  # trailers
                    pass
                return
            while size > 0:
                data = await reader.read(min(size, READ_CHUNK))
                if not data:
                    raise HTTPError("connection closed inside a chunk")
                size -= len(data)
                yield data
            await reader.readline()
        return
    length = head.length
    if length is None:
        if not until_close:
            return
        while data := await reader.read(READ_CHUNK):
            yield data
        return
    while length > 0:
        data = await reader.read(min(length, READ_CHUNK))
        if not data:
            raise HTTPError("connection closed inside a body")
        length -= len(data)
        yield data


async def read_body(
    reader: asyncio.StreamReader, head: Head, limit: int = MAX_REQUEST_BODY
) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for data in iter_body(reader, head):
        size += len(data)
        if size > limit:
            raise HTTPError(f"body larger than {limit} bytes")
        parts.append(data)
    return b"".join(parts)


def encode_head(start: str, headers: Headers) -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def status_of(head: Head) -> tuple[int, str]:
    parts = head.start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HTTPError(f"bad status line {head.start[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


def no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200
