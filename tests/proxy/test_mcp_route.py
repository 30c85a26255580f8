"""HTTP MCP servers of a sandboxed runner go through the host's proxy: the runner names a
server, the host connects to the URL in its DB (with its headers, under web_private)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.proxy.mcp_route import mcp_upstreams
from carapace.runner.mcp_client import McpHub
from carapace.runner.mcp_config import parse_servers
from carapace.testing.mcp_server import serve_http

from .proxy_rig import ProxyRig


@pytest.fixture
def web_url() -> Iterator[str]:
    with serve_http() as url:
        yield url


def hub_via(rig: ProxyRig, tmp_path: Path, url: str) -> McpHub:
    # the runner's config may say anything about the URL: only the name goes to the host
    servers, _ = parse_servers({"web": {"url": "http://agent-chosen.invalid/mcp"}})
    hub = McpHub(servers, cwd=tmp_path, proxy_socket=str(rig.socket), start_timeout_s=15)
    hub.start()
    return hub


def test_mcp_upstreams_from_the_db_column() -> None:
    raw = '{"a": {"url": "https://x/mcp", "headers": {"T": "1"}}, "b": {"command": "x"}, ' \
          '"c": {"url": "file:///etc/passwd"}}'  # fmt: skip
    assert mcp_upstreams(raw) == {"a": ("https://x/mcp", (("T", "1"),))}
    assert mcp_upstreams("not json") == {}


def test_http_mcp_server_through_the_proxy(tmp_path: Path, web_url: str) -> None:
    rig = ProxyRig(tmp_path, "http://127.0.0.1:9", web_private=True,
                   mcp={"web": (web_url, (("X-Extra", "from-host"),))})  # fmt: skip
    hub = hub_via(rig, tmp_path, web_url)
    try:
        assert hub.call("mcp__web__add", {"a": 20, "b": 22}).content == "42"
        assert hub.call("mcp__web__echo", {"text": "via host"}).content == "echo: via host"
    finally:
        hub.close()
        rig.close()


def test_private_address_refused_without_web_private(tmp_path: Path, web_url: str) -> None:
    rig = ProxyRig(tmp_path, "http://127.0.0.1:9", web_private=False,
                   mcp={"web": (web_url, ())})  # fmt: skip
    hub = hub_via(rig, tmp_path, web_url)
    try:
        result = hub.call("mcp__web__add", {"a": 1, "b": 1})
        assert result.is_error and "not running" in result.content
        assert "host refused it (403)" in result.content and "web_private" in result.content
    finally:
        hub.close()
        rig.close()


def test_unknown_server_name_is_not_forwarded(tmp_path: Path, web_url: str) -> None:
    rig = ProxyRig(tmp_path, "http://127.0.0.1:9", web_private=True)
    hub = hub_via(rig, tmp_path, web_url)
    try:
        result = hub.call("mcp__web__add", {})
        assert (
            result.is_error and "(404)" in result.content and "no HTTP MCP server" in result.content
        )
    finally:
        hub.close()
        rig.close()


def test_session_route_reads_http_servers_from_the_db(tmp_path: Path) -> None:
    from carapace.db import groups
    from carapace.db.central import open_central
    from carapace.proxy.hostside import session_route
    from carapace.proxy.keys import KeyStore
    from carapace.sandbox.process import RunnerSpec

    db = open_central(tmp_path / "v2.db")
    g = groups.create_agent_group(db, "Main", "main")
    groups.update_container_config(db, g.id, {"mcp_servers": {
        "web": {"type": "http", "url": "https://mcp.example/mcp", "headers": {"T": "x"}},
        "local": {"command": "srv"}}})  # fmt: skip
    spec = RunnerSpec("sess-1", g.id, tmp_path / "s", tmp_path / "a")
    route = session_route(db, KeyStore({}), spec)
    assert dict(route.mcp) == {"web": ("https://mcp.example/mcp", (("T", "x"),))}
    db.close()


def test_the_checked_address_is_the_one_connected_to() -> None:
    """DNS rebinding: the name answers a public address to the check and a private one a
    moment later. The route resolves once and connects to the address it checked, so the
    private server never sees the request; a checked address that serves does."""
    import asyncio
    import socket

    from carapace.proxy.http11 import Head
    from carapace.proxy.mcp_route import forward_mcp
    from carapace.proxy.upstream import UpstreamPool

    async def scenario() -> None:
        seen: list[bytes] = []

        async def private_server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen.append(await r.readuntil(b"\r\n\r\n"))
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            w.close()

        server = await asyncio.start_server(private_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://localhost:{port}/mcp"  # the system resolves it to 127.0.0.1

        def answers(first: str) -> Any:
            def resolve(host: str, p: int, *_a: Any) -> list[tuple[Any, ...]]:
                assert host == "localhost"
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (first, p))]

            return resolve

        async def call(resolve: Any, non_public: Any) -> bytes:
            got = bytearray()

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                await forward_mcp(UpstreamPool(connect_timeout_s=5), {"web": (url, ())}, False,
                                  "sess", "POST", "/_carapace/mcp/web", Head("POST /x", []),
                                  b"{}", w, resolve=resolve, non_public=non_public)  # fmt: skip
                w.close()

            front = await asyncio.start_server(handle, "127.0.0.1", 0)
            r, w = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
            got += await r.read()
            w.close()
            front.close()
            return bytes(got)

        # the check is told 127.0.0.2 (called public here); the private server is on .1
        out = await call(answers("127.0.0.2"), lambda a: a == "127.0.0.1")
        assert out.startswith(b"HTTP/1.1 502") and seen == []
        # told the private address: refused before any connection
        out = await call(answers("127.0.0.1"), lambda a: a == "127.0.0.1")
        assert out.startswith(b"HTTP/1.1 403") and seen == []
        # the checked address serves: the request goes there, named as in the URL
        out = await call(answers("127.0.0.1"), lambda a: False)
        assert out.startswith(b"HTTP/1.1 200") and len(seen) == 1
        assert f"Host: localhost:{port}".encode() in seen[0]
        server.close()

    asyncio.run(scenario())
