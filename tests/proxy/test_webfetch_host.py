"""web_fetch: one lookup per connection, the connection made to the checked address,
every redirect hop checked again; and the host-side fetch behind the proxy socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from carapace.runner import webfetch

from .proxy_rig import ProxyRig

PAGE = b"<html><head><title>T</title></head><body><p>hello page</p></body></html>"


class Site:
    def __init__(self, host: str, redirect_to: str | None = None) -> None:
        self.hits = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits += 1
                if redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect_to.replace("PORT", str(site.port)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites() -> Iterator[list[Site]]:
    made: list[Site] = []
    yield made
    for s in made:
        s.close()


def _resolver(answers: dict[str, list[str]], calls: list[str]) -> Any:
    def resolve(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        seq = answers[host]
        addr = seq.pop(0) if len(seq) > 1 else seq[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))]

    return resolve


def _only_127_0_0_2_private(address: str) -> bool:
    return address == "127.0.0.2"  # this test's stand-in for "a private address"


def test_dns_rebinding_cannot_move_the_connection(sites: list[Site]) -> None:
    public = Site("127.0.0.1")
    private = Site("127.0.0.2")
    sites += [public, private]
    calls: list[str] = []
    # the first answer passes the check; any later answer would point at the private site
    resolve = _resolver({"rebind.test": ["127.0.0.1", "127.0.0.2"]}, calls)
    result = webfetch.fetch(f"http://rebind.test:{public.port}/", max_chars=1000,
                            max_bytes=10_000, timeout_s=5, allow_private=False,
                            resolve=resolve, non_public=_only_127_0_0_2_private)  # fmt: skip
    assert not result.is_error and "hello page" in result.content
    assert calls == ["rebind.test"]  # resolved once, connected to what was checked
    assert (public.hits, private.hits) == (1, 0)


def test_redirects_are_checked_again(sites: list[Site]) -> None:
    inner = Site("127.0.0.2")
    outer = Site("127.0.0.1", redirect_to=f"http://inner.test:{inner.port}/")
    sites += [inner, outer]
    calls: list[str] = []
    resolve = _resolver({"outer.test": ["127.0.0.1"], "inner.test": ["127.0.0.2"]}, calls)
    result = webfetch.fetch(f"http://outer.test:{outer.port}/", max_chars=1000,
                            max_bytes=10_000, timeout_s=5, allow_private=False,
                            resolve=resolve, non_public=_only_127_0_0_2_private)  # fmt: skip
    assert result.is_error and "inner.test resolves to a local or private-network" in result.content
    assert calls == ["outer.test", "inner.test"]
    assert (outer.hits, inner.hits) == (1, 0)


def test_real_policy_refuses_loopback_names() -> None:
    result = webfetch.fetch("http://localhost:9/", max_chars=100, max_bytes=100, timeout_s=2,
                            allow_private=False)  # fmt: skip
    assert result.is_error and "private-network" in result.content


@pytest.mark.parametrize(("web", "private", "expect"), [
    (True, False, "private-network address (127.0.0.1)"),
    (True, True, "hello page"),
    (False, True, "Web access is disabled"),
])  # fmt: skip
def test_host_side_fetch_through_the_proxy_socket(
    tmp_path: Path, sites: list[Site], web: bool, private: bool, expect: str
) -> None:
    site = Site("127.0.0.1")
    sites.append(site)
    rig = ProxyRig(tmp_path, "http://127.0.0.1:9", web=web, web_private=private)
    try:
        result = webfetch.fetch_via_host(str(rig.socket), f"http://127.0.0.1:{site.port}/x",
                                         max_chars=1000, max_bytes=10_000, timeout_s=5)  # fmt: skip
    finally:
        rig.close()
    assert expect in result.content
    assert site.hits == (1 if web and private else 0)
