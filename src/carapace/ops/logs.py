"""Log output: one line per event (text, as always) or JSON lines, and file rotation.

``log_format = "json"`` in carapace.toml makes every record one JSON object with ``ts``,
``level``, ``logger``, ``msg`` and, when the code logging it knows them, ``session_id``,
``agent_group_id``, ``message_id`` and ``chat_id`` as fields (passed with ``extra=``;
``LogIds`` is the adapter that adds them). When the host does not run under a service
manager (no ``INVOCATION_ID`` from systemd, no ``XPC_SERVICE_NAME`` from launchd) it also
writes ``<home>/logs/carapace.log``, rotated by size (``[logs] max_bytes``, ``backups``;
``[logs] file = false`` turns the file off).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from carapace.config import Home, Settings
from carapace.errors import ConfigError
from carapace.ops import section, setting_int

ID_FIELDS = ("session_id", "agent_group_id", "message_id", "chat_id", "channel_type")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
_MARK = "_carapace_ops_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ids given with ``extra=`` become fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ID_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class LogIds(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``LogIds(logger, session_id=..., agent_group_id=...)``: records carry the ids."""

    def __init__(self, logger: logging.Logger, **ids: str | None) -> None:
        super().__init__(logger, {k: v for k, v in ids.items() if v is not None})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def log_format(settings: Settings) -> str:
    fmt = settings.extra.get("log_format", "text")
    if fmt not in ("text", "json"):
        raise ConfigError('carapace.toml: log_format must be "text" or "json"')
    return str(fmt)


def under_service_manager(env: MutableMapping[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    return bool(e.get("INVOCATION_ID") or e.get("XPC_SERVICE_NAME") or e.get("CARAPACE_SERVICE"))


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(home: Home, settings: Settings, *, env: MutableMapping[str, str] | None = None,
              root: logging.Logger | None = None) -> logging.Handler | None:  # fmt: skip
    """Apply ``log_format`` to the root logger's handlers; add the rotating file when not
    under a service manager. Returns the file handler (or None). Idempotent."""
    fmt = log_format(settings)
    table = section(settings, "logs")
    want_file = table.get("file", True)
    if not isinstance(want_file, bool):
        raise ConfigError("carapace.toml: logs.file must be true or false")
    max_bytes = setting_int(table, "max_bytes", DEFAULT_MAX_BYTES, "logs")
    backups = setting_int(table, "backups", DEFAULT_BACKUPS, "logs")
    log = root or logging.getLogger()
    formatter = make_formatter(fmt)
    for h in list(log.handlers):
        if getattr(h, _MARK, False):
            log.removeHandler(h)
            h.close()
        else:
            h.setFormatter(formatter)
    if not want_file or under_service_manager(env):
        return None
    logs_dir = home.root / "logs"
    logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        logs_dir / "carapace.log", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(formatter)
    setattr(handler, _MARK, True)
    log.addHandler(handler)
    return handler
