"""What ``carapace run`` adds around a host: log format/rotation and the metrics endpoint."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING

from carapace.config import Home

if TYPE_CHECKING:
    from carapace.host.host import Host
    from carapace.ops.metrics import HostMetrics
    from carapace.ops.retention import SessionCompaction

logger = logging.getLogger(__name__)
RETENTION_FIRST_S = 60.0


def freeze_heap() -> None:
    """Once the host is up: what is alive now (modules, the host, its caches) lives as long
    as the process. Moved out of the garbage collector's generations, it is no longer walked
    by every full collection, a pause of 20-60 ms on the event loop measured in the
    ``concurrent`` benchmark (issue 19); garbage made later is collected as before."""
    gc.collect()
    gc.freeze()


def setup_logging(home: Home) -> None:
    from carapace.ops.logs import configure

    handler = configure(home, home.load_settings())
    if handler is not None:
        logger.info("logging to %s", getattr(handler, "baseFilename", "?"))


def start_metrics(host: Host) -> HostMetrics | None:
    """Wrap the host with metrics and serve them when ``[metrics] port`` is set (call this
    on the host's event loop, before ``host.start()``)."""
    from carapace.ops.metrics import HostMetrics, metrics_port

    port = metrics_port(host.settings)
    if not port:
        return None
    m = HostMetrics()
    m.install(host)
    try:
        bound = m.serve(port)
    except OSError as exc:
        from carapace.errors import ConfigError

        raise ConfigError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror or exc}")
    m.start_probe()
    logger.info("metrics at http://127.0.0.1:%d/metrics", bound)
    return m


async def retention_pass(host: Host) -> list[SessionCompaction]:
    """One retention pass of a running host, off its event loop (own DB connection).
    Sessions with a runner alive, starting or queued when the pass begins keep their
    ``outbound.db`` as it is."""
    from carapace.db.connection import connect
    from carapace.ops.retention import RetentionPolicy, compact_home

    policy = RetentionPolicy.from_settings(host.settings)
    busy = {*host.pool.running, *host.pool.queued()}
    busy.update(s for s in list(getattr(host.pool, "_spawning", {})) if isinstance(s, str))
    now = host.now()

    def work() -> list[SessionCompaction]:
        conn = connect(host.home.central_db)
        try:
            return compact_home(host.home, conn, policy, now=now, running=busy)
        finally:
            conn.close()

    done = await asyncio.to_thread(work)
    gone = sum(c.inbound + c.acks + c.outbound + c.delivered for c in done)
    if gone:
        logger.info("retention (%s, %g days): %d row(s) from %d session(s)", policy.policy,
                    policy.days, gone, len(done))  # fmt: skip
    return done


def start_retention(host: Host) -> bool:
    """Run ``retention_pass`` a minute after start and then every ``[retention]
    interval_hours`` (default 24) while the host runs; off with ``policy = "off"``."""
    from carapace.ops import section
    from carapace.ops.retention import RetentionPolicy

    policy = RetentionPolicy.from_settings(host.settings)
    hours = section(host.settings, "retention").get("interval_hours", 24)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
        from carapace.errors import ConfigError

        raise ConfigError("carapace.toml: retention.interval_hours must be a number > 0")
    if policy.policy == "off":
        return False

    async def loop() -> None:
        await asyncio.sleep(RETENTION_FIRST_S)
        while True:
            try:
                await retention_pass(host)
            except Exception:
                logger.exception("retention pass failed")
            await asyncio.sleep(float(hours) * 3600)

    host._spawn(loop())
    return True
