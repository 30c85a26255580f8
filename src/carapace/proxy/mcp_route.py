"""The egress proxy's MCP route: a sandboxed runner's streamable-HTTP MCP servers.

``/_carapace/mcp/<name>`` (any method) is forwarded to the URL of the group's MCP server
``<name>`` as the host reads it from ``container_configs.mcp_servers`` when the runner
starts (``mcp_upstreams``): the runner names a server, never a URL. The server's configured
``headers`` are added here (the runner never needs them); the runner's own
``Authorization``/``Cookie`` headers are dropped. The group's ``web_private`` rule applies as
for ``web_fetch``: a URL whose host resolves to a loopback, private or link-local address is
refused unless ``web_private: true`` (the name is resolved for the check and again by the
connection, so unlike ``web_fetch`` this route does not pin the checked address).
Responses (JSON or an SSE stream) are relayed chunk by chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from carapace.jsonutil import loads_or
from carapace.proxy.http11 import HOP_BY_HOP, LAST_CHUNK, Head, Headers, chunk, encode_head
from carapace.proxy.upstream import UpstreamPool

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
) -> None:
    name = unquote(target.split("?", 1)[0][len(MCP_PATH) :])
    entry = servers.get(name)
    if entry is None:
        await _send(writer, 404, f"no HTTP MCP server {name!r} in this group's config")
        return
    url, extra = entry
    if not web_private:
        from carapace.runner.webfetch import private_address

        host = urlsplit(url).hostname or ""
        addr = await asyncio.to_thread(private_address, host)
        if addr is not None:
            await _send(writer, 403, f"MCP server {name!r}: {host} resolves to a local or "
                        f"private-network address ({addr}); allowed only with web_private: true")  # fmt: skip
            return
    headers: Headers = [(k, v) for k, v in head.headers if k.lower() not in _DROP]
    headers += list(extra)
    try:
        resp = await pool.request(method, url, headers, body)
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
