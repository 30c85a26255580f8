"""``carapace bench proxy``: what the egress proxy adds to a model call.

* added latency: the same request to the fake provider server, alternately direct (TCP on
  loopback) and through the proxy's unix socket, both on warm keep-alive connections; the
  figures are the per-pair differences (proxied minus direct), p50 and p99;
* throughput: calls per second through the proxy with several clients at once (and direct,
  for comparison: the fake server in Python is usually the limit);
* first byte: an upstream that sends the head and a first event, then pauses; the delay
  from the upstream's write of that event to the client's read of it through the proxy
  (the whole reply is never gathered first).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carapace.db.central import open_central
from carapace.proxy.keys import KeyStore
from carapace.proxy.server import EgressProxy, SessionRoute
from carapace.proxy.usage import UsageStore
from carapace.stats import percentile
from carapace.testing.fake_llm import FakeLLMServer, FakeReply

BODY = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "bench"}]}).encode()  # fmt: skip


@dataclass
class ProxyBenchResult:
    n: int
    added_p50_ms: float
    added_p99_ms: float
    direct_p50_ms: float
    proxied_p50_ms: float
    throughput_per_s: float
    direct_throughput_per_s: float
    first_byte_p50_ms: float
    first_byte_max_ms: float

    def as_json(self) -> dict[str, float | int]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}

    def summary(self) -> str:
        return (
            f"egress proxy (n={self.n}): added latency p50 {self.added_p50_ms:.3f} ms, "
            f"p99 {self.added_p99_ms:.3f} ms (direct p50 {self.direct_p50_ms:.2f} ms, "
            f"proxied {self.proxied_p50_ms:.2f} ms); throughput {self.throughput_per_s:.0f} "
            f"calls/s (direct {self.direct_throughput_per_s:.0f}); streamed first byte "
            f"forwarded in p50 {self.first_byte_p50_ms:.3f} ms (max {self.first_byte_max_ms:.3f})"
        )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("carapace-proxy", timeout=30)
        self.path_ = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path_)
        self.sock = sock


def _call(conn: http.client.HTTPConnection, path: str) -> float:
    t0 = time.perf_counter()
    conn.request("POST", path, BODY, {"Content-Type": "application/json", "x-api-key": "none"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"bench call failed: {resp.status}")
    return (time.perf_counter() - t0) * 1000


def _throughput(make: Callable[[], http.client.HTTPConnection], path: str, total: int,
                clients: int) -> float:  # fmt: skip
    per = max(1, total // clients)

    def work() -> None:
        conn = make()
        for _ in range(per):
            _call(conn, path)
        conn.close()

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * clients / (time.perf_counter() - t0)


class _SlowStream:
    """An upstream that sends a head and one event, notes the time, then pauses."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent_at: list[float] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while True:  # one request per connection, then close
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if sep:
                    length = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n")
                                       if ln.lower().startswith(b"content-length")), b"0"))  # fmt: skip
                    if len(rest) >= length:
                        break
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")  # fmt: skip
            event = b'event: ping\ndata: {"type": "ping"}\n\n'
            self.sent_at.append(time.perf_counter())
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            time.sleep(0.05)
            conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def _first_byte(sock_path: str, upstream: _SlowStream) -> float:
    conn = _UnixConnection(sock_path)
    conn.request("POST", "/anthropic/v1/messages", BODY, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read1(1)
    got = time.perf_counter()
    resp.read()
    conn.close()
    return (got - upstream.sent_at[-1]) * 1000


def run_proxy_bench(n: int = 200, clients: int = 4) -> ProxyBenchResult:
    with tempfile.TemporaryDirectory(prefix="carapace-bench-proxy-") as tmp:
        return _run(Path(tmp), n, clients)


def _run(tmp: Path, n: int, clients: int) -> ProxyBenchResult:
    db_path = tmp / "v2.db"
    db = open_central(db_path)
    usage = UsageStore(db_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = EgressProxy(KeyStore({"ANTHROPIC_API_KEY": "sk-bench"}), usage=usage, db=db,
                        socket_dir=tmp / "s")  # fmt: skip
    slow = _SlowStream()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    async def open_route(url: str, sid: str) -> Path:
        path = proxy.open_session(SessionRoute(sid, "bench", upstreams={"anthropic": url}))
        await asyncio.sleep(0.01)
        return path

    try:
        with FakeLLMServer(default=FakeReply(text="ok")) as srv:
            sock = str(run(open_route(srv.anthropic_base_url, "bench")))
            direct = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            via = _UnixConnection(sock)
            for _ in range(10):
                _call(direct, "/v1/messages")
                _call(via, "/anthropic/v1/messages")
            d_times: list[float] = []
            p_times: list[float] = []
            for _ in range(max(1, n)):
                d_times.append(_call(direct, "/v1/messages"))
                p_times.append(_call(via, "/anthropic/v1/messages"))
            direct.close()
            via.close()
            added = [p - d for p, d in zip(p_times, d_times, strict=True)]
            total = max(clients, n)
            tput = _throughput(lambda: _UnixConnection(sock), "/anthropic/v1/messages",
                               total, clients)  # fmt: skip
            dtput = _throughput(lambda: http.client.HTTPConnection("127.0.0.1", srv.port),
                                "/v1/messages", total, clients)  # fmt: skip
        slow_sock = str(run(open_route(f"http://127.0.0.1:{slow.port}", "bench-stream")))
        firsts = [_first_byte(slow_sock, slow) for _ in range(20)]
    finally:
        slow.close()
        run(proxy.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()
        usage.close()
        db.close()
    return ProxyBenchResult(
        n=len(added), added_p50_ms=statistics.median(added),
        added_p99_ms=percentile(added, 0.99), direct_p50_ms=statistics.median(d_times),
        proxied_p50_ms=statistics.median(p_times), throughput_per_s=tput,
        direct_throughput_per_s=dtput, first_byte_p50_ms=statistics.median(firsts),
        first_byte_max_ms=max(firsts),
    )  # fmt: skip


def docs_section(result: ProxyBenchResult) -> str:
    return f"""## Egress proxy: added latency, throughput, streaming

`carapace bench proxy --write-docs`: the same request to the fake provider server,
alternately direct and through the host's egress proxy (unix socket, warm keep-alive
connections, key injection, budget check, usage metering and its batched write included).

| figure | value | goal |
|---|---|---|
| added latency p50 (proxied − direct, per pair) | **{result.added_p50_ms:.3f} ms** | < 1 ms |
| added latency p99 | {result.added_p99_ms:.3f} ms | — |
| direct / proxied p50 | {result.direct_p50_ms:.2f} / {result.proxied_p50_ms:.2f} ms | — |
| throughput through the proxy (4 clients) | {result.throughput_per_s:.0f} calls/s | — |
| same, direct to the fake server | {result.direct_throughput_per_s:.0f} calls/s | — |
| streamed reply: first event forwarded after (p50 / max of 20) | {result.first_byte_p50_ms:.3f} / {result.first_byte_max_ms:.3f} ms | < 1 ms |
| samples | {result.n} | — |

"""


def write_docs(result: ProxyBenchResult, path: Path | None = None) -> Path:
    """Put the proxy section into docs/benchmarks.md (before ``## Machine``), replacing an
    earlier one."""
    target = path or Path.cwd() / "docs" / "benchmarks.md"
    text = target.read_text(encoding="utf-8") if target.exists() else "# Benchmarks\n\n"
    marker = "## Egress proxy"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    section = docs_section(result)
    machine = text.find("## Machine")
    text = text[:machine] + section + text[machine:] if machine >= 0 else text + "\n" + section
    target.write_text(text, encoding="utf-8")
    return target
