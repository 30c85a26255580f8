"""Operations: service units, backup and restore, retention, logs, metrics, status.

Settings come from ``carapace.toml`` (all optional)::

    log_format = "json"            # or "text" (default)
    [logs]    file = true, max_bytes = 10485760, backups = 5
    [metrics] port = 9464           # loopback only; 0 or absent: off
    [retention] days = 30, policy = "archive", interval_hours = 24   # or "prune" / "off"
"""

from __future__ import annotations

from typing import Any

from carapace.config import Settings
from carapace.errors import ConfigError


def section(settings: Settings, name: str) -> dict[str, Any]:
    """One ``[name]`` table of carapace.toml (empty when absent); a non-table is an error."""
    value = settings.extra.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"carapace.toml: [{name}] must be a table, not {type(value).__name__}")
    return value


def setting_int(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"carapace.toml: {where}.{key} must be a whole number >= 0")
    return value
