"""HTTP MCP servers of a sandboxed runner go through the host's proxy: the runner names a
server, the host connects to the URL in its DB (with its headers, under web_private)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.proxy.mcp_route import mcp_upstreams
from carapace.runner.mcp_client import McpHub, parse_servers
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
