"""Prometheus metrics of a running host, served at ``/metrics`` on a loopback port.

``[metrics] port = 9464`` in carapace.toml turns the endpoint on (``127.0.0.1`` only; there
is no web server yet, so it always has its own port). ``HostMetrics.install(host)`` wraps
the host's ``route``, ``sweep_once`` and the delivery's ``drain`` to count and time them,
hears each row's outcome (``Delivery.on_outcome``), and starts an event-loop stall probe.
Gauges that describe state (runners, approvals, model usage) are read at scrape time: the
pool from the host's objects, the database through a read-only connection of the scraping
thread. Model calls and tokens come from the ``carapace_usage`` table when it exists;
without it they are not exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from carapace.config import Settings
from carapace.ops import section, setting_int

if TYPE_CHECKING:
    from carapace.host.host import Host


LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STALL_PROBE_S = 0.25
MAX_TRACKED = 10_000


def metrics_port(settings: Settings) -> int:
    """The configured loopback port (0: off)."""
    port = setting_int(section(settings, "metrics"), "port", 0, "metrics")
    if port > 65535:
        from carapace.errors import ConfigError

        raise ConfigError("carapace.toml: metrics.port must be at most 65535")
    return port


class _State(Collector):
    def __init__(self, metrics: HostMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        host = self.m.host
        if host is not None:
            yield GaugeMetricFamily("carapace_runners_live", "Runner processes alive.",
                                    value=len(host.pool.running))  # fmt: skip
            yield GaugeMetricFamily("carapace_runners_queued", "Sessions waiting for a slot.",
                                    value=len(host.pool.queued()))  # fmt: skip
        stall = GaugeMetricFamily(
            "carapace_event_loop_stall_max_seconds",
            "Longest event-loop stall since the previous scrape.",
            value=self.m.take_stall(),
        )
        yield stall
        if self.m.db_path is None:
            return
        try:
            conn = sqlite3.connect(f"file:{self.m.db_path}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error:
            return
        try:
            yield from _db_metrics(conn)
        except sqlite3.Error:
            pass
        finally:
            conn.close()


def _has(conn: sqlite3.Connection, table: str) -> bool:
    q = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
    return conn.execute(q, (table,)).fetchone() is not None


def _db_metrics(conn: sqlite3.Connection) -> Iterator[Metric]:
    pending = 0
    for table in ("pending_approvals", "pending_sender_approvals", "pending_channel_approvals"):
        if _has(conn, table):
            where = " WHERE status='pending'" if table == "pending_approvals" else ""
            pending += int(conn.execute(f"SELECT COUNT(*) FROM {table}{where}").fetchone()[0])
    yield GaugeMetricFamily("carapace_approvals_pending", "Approvals waiting for a click.",
                            value=pending)  # fmt: skip
    if not _has(conn, "carapace_usage"):
        return
    calls = CounterMetricFamily("carapace_model_calls", "Model calls by agent group.",
                                labels=["agent_group"])  # fmt: skip
    tokens = CounterMetricFamily("carapace_model_tokens", "Model tokens by agent group.",
                                 labels=["agent_group", "kind"])  # fmt: skip
    q = ("SELECT agent_group_id, COUNT(*), SUM(input_tokens), SUM(output_tokens) "
         "FROM carapace_usage GROUP BY agent_group_id")  # fmt: skip
    for ag, n, tin, tout in conn.execute(q):
        calls.add_metric([str(ag)], float(n))
        tokens.add_metric([str(ag), "input"], float(tin or 0))
        tokens.add_metric([str(ag), "output"], float(tout or 0))
    yield calls
    yield tokens


class HostMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.routed = Counter("carapace_messages_routed", "Inbound messages routed to a session.",
                              ["channel"], registry=self.registry)  # fmt: skip
        self.delivered = Counter("carapace_messages_delivered", "Outbound messages delivered.",
                                 ["channel"], registry=self.registry)  # fmt: skip
        self.failed = Counter("carapace_messages_failed", "Outbound messages failed for good.",
                              ["channel"], registry=self.registry)  # fmt: skip
        self.roundtrip = Histogram(
            "carapace_roundtrip_seconds", "From an inbound message to the delivery of its reply.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.sweep = Histogram("carapace_sweep_seconds", "Duration of a sweep pass.",
                               buckets=DURATION_BUCKETS, registry=self.registry)  # fmt: skip
        self.drain = Histogram("carapace_drain_seconds", "Duration of one session's delivery pass.",
                               buckets=DURATION_BUCKETS, registry=self.registry)  # fmt: skip
        self.host: Host | None = None
        self.db_path: str | None = None
        self._stall = 0.0
        self._inbound: OrderedDict[str, float] = OrderedDict()
        self._server: Any = None
        self._probe: asyncio.Task[None] | None = None
        self.registry.register(_State(self))

    # ------------------------------------------------------------ recording
    def note_stall(self, seconds: float) -> None:
        self._stall = max(self._stall, seconds)

    def take_stall(self) -> float:
        value, self._stall = self._stall, 0.0
        return value

    def note_routed(self, channel: str, message_ids: list[str]) -> None:
        now = time.monotonic()
        for mid in message_ids:
            self.routed.labels(channel or "unknown").inc()
            self._inbound[mid] = now
        while len(self._inbound) > MAX_TRACKED:
            self._inbound.popitem(last=False)

    def note_delivery(self, channel: str | None, status: str | None, in_reply_to: Any) -> None:
        label = channel or "none"
        if status == "delivered":
            self.delivered.labels(label).inc()
        elif status == "failed":
            self.failed.labels(label).inc()
        if status is not None and isinstance(in_reply_to, str):
            started = self._inbound.pop(in_reply_to, None)
            if started is not None:
                self.roundtrip.observe(time.monotonic() - started)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    # ------------------------------------------------------------ wiring
    def install(self, host: Host) -> None:
        """Wrap the host's passes to count and time them (instance attributes only)."""
        self.host = host
        self.db_path = host.home.central_db.resolve().as_posix()
        route, sweep_once = host.route, host.sweep_once
        drain = host.delivery.drain

        async def timed_route(event: Any, **kw: Any) -> Any:
            res = await route(event, **kw)
            self.note_routed(event.channel_type, [r.message_id for r in res.routed])
            return res

        async def timed_sweep(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await sweep_once(*a, **kw)
            finally:
                self.sweep.observe(time.perf_counter() - t)

        async def timed_drain(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await drain(*a, **kw)
            finally:
                self.drain.observe(time.perf_counter() - t)

        def counted_row(row: Any, status: str | None) -> None:
            with contextlib.suppress(Exception):
                self.note_delivery(row["channel_type"], status, row["in_reply_to"])

        host.route = timed_route  # type: ignore[method-assign]
        host.sweep_once = timed_sweep  # type: ignore[method-assign]
        host.delivery.drain = timed_drain  # type: ignore[method-assign]
        host.delivery.on_outcome = counted_row

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(STALL_PROBE_S)
            self.note_stall(max(0.0, loop.time() - t - STALL_PROBE_S))

    def start_probe(self) -> None:
        self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0 picks a free port); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
