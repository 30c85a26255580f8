"""What ``carapace run`` adds around a host: log format/rotation and the metrics endpoint."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from carapace.config import Home

if TYPE_CHECKING:
    from carapace.host.host import Host
    from carapace.ops.metrics import HostMetrics

logger = logging.getLogger(__name__)


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
