"""The egress proxy's MCP route: a sandboxed runner's streamable-HTTP MCP servers.

``/_carapace/mcp/<name>`` (any method) is forwarded to the URL of the group's MCP server
``<name>`` as the host reads it from ``container_configs.mcp_servers`` when the runner
starts (``mcp_upstreams``): the runner names a server, never a URL. The server's configured
``headers`` are added here (the runner never needs them); the runner's own
``Authorization``/``Cookie`` headers are dropped. The group's ``web_private`` rule applies as
for ``web_fetch``: a URL whose host resolves to a loopback, private or link-local address is
refused unless ``web_private: true``. The name is resolved once, every address checked, and
the connection made to a checked address (pinned, as ``web_fetch`` does): a name that
answers differently a moment later cannot steer the request to a private address.
Responses (JSON or an SSE stream) are relayed chunk by chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit

from carapace.jsonutil import loads_or
from carapace.proxy.http11 import HOP_BY_HOP, LAST_CHUNK, Head, Headers, chunk, encode_head
from carapace.proxy.upstream import UpstreamPool
from carapace.runner.webfetch import Resolver, is_non_public

logger = logging.getLogger(__name__)

MCP_PATH = "/_carapace/mcp/"
_DROP = frozenset({*HOP_BY_HOP, "authorization", "cookie", "proxy-authorization"})

McpUpstreams = Mapping[str, tuple[str, tuple[tuple[str, str], ...]]]


def mcp_upstreams(raw: str | None) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """The HTTP MCP servers of a ``mcp_servers`` column: ``{name: (url, headers)}``."""
    doc = loads_or(raw or "{}", {})
    out: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
    if not isinstance(doc, dict):
        return out
    for name, entry in doc.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            continue
        url = entry["url"]
        if urlsplit(url).scheme not in ("http", "https"):
            continue
        raw_headers = entry.get("headers")
        headers: dict[str, object] = raw_headers if isinstance(raw_headers, dict) else {}
        pairs = tuple((str(k), str(v)) for k, v in headers.items() if isinstance(v, str))
        out[str(name)] = (url, pairs)
    return out


async def forward_mcp(
    pool: UpstreamPool,
    servers: McpUpstreams,
    web_private: bool,
    session_id: str,
    method: str,
    target: str,
    head: Head,
    body: bytes,
    writer: asyncio.StreamWriter,
    *,
    resolve: Resolver = socket.getaddrinfo,
    non_public: Callable[[str], bool] = is_non_public,
) -> None:
    name = unquote(target.split("?", 1)[0][len(MCP_PATH) :])
    entry = servers.get(name)
    if entry is None:
        await _send(writer, 404, f"no HTTP MCP server {name!r} in this group's config")
        return
    url, extra = entry
    pinned = ""
    if not web_private:  # one lookup; every address checked; the connection goes to one
        # of them, never to a second lookup's answer (no DNS-rebinding window)
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            infos = await asyncio.to_thread(resolve, host, parts.port or 0, 0,
                                            socket.SOCK_STREAM, socket.IPPROTO_TCP)  # fmt: skip
        except (OSError, UnicodeError) as exc:
            await _send(writer, 502, f"MCP server {name!r}: {host} does not resolve ({exc})")
            return
        addrs = [str(info[4][0]) for info in infos]
        bad = next((a for a in addrs if non_public(a)), None)
        if bad is not None or not addrs:
            await _send(writer, 403, f"MCP server {name!r}: {host} resolves to a local or "
                        f"private-network address ({bad}); allowed only with web_private: true")  # fmt: skip
            return
        pinned = addrs[0]
    headers: Headers = [(k, v) for k, v in head.headers if k.lower() not in _DROP]
    headers += list(extra)
    try:
        resp = await pool.request(method, url, headers, body, connect_to=pinned)
    except (OSError, TimeoutError, Exception) as exc:
        logger.warning("session %s: MCP server %s unreachable: %s", session_id, name, exc)
        await _send(writer, 502, f"MCP server {name!r} unreachable: {type(exc).__name__}")
        return
    length = None if resp.head.chunked else resp.head.length
    out: Headers = [(k, v) for k, v in resp.head.headers if k.lower() not in HOP_BY_HOP]
    out.append(("Content-Length", str(length)) if length is not None
               else ("Transfer-Encoding", "chunked"))  # fmt: skip
    writer.write(encode_head(f"HTTP/1.1 {resp.status} {resp.reason}".rstrip(), out))
    await writer.drain()
    async for data in resp.body:
        writer.write(data if length is not None else chunk(data))
        await writer.drain()
    if length is None:
        writer.write(LAST_CHUNK)
    await writer.drain()


async def _send(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    if status != 502:
        logger.warning("MCP route: %s", message)
    body = json.dumps({"error": message}).encode()
    reason = {403: "Forbidden", 404: "Not Found", 502: "Bad Gateway"}.get(status, "Error")
    writer.write(encode_head(f"HTTP/1.1 {status} {reason}", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]) + body)  # fmt: skip
    await writer.drain()
