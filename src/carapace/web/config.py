"""The ``[web]`` section of ``carapace.toml``: the web server, its chat and its webhooks.

::

    [web]
    enabled = true              # off by default
    host = "127.0.0.1"          # a non-loopback address needs tls_cert+tls_key or behind_proxy
    port = 8377
    public_url = "https://assistant.example.org"   # what login links point at (optional)
    behind_proxy = false        # a TLS-terminating reverse proxy is in front
    tls_cert = "/path/cert.pem"
    tls_key = "/path/key.pem"
    session_days = 7

    [web.hooks.ci]              # POST /hooks/ci; its secret: WEBHOOK_CI_SECRET in secrets.env
    agent = "main"              # the agent group (folder) it talks to
    callback_url = "https://ci.example.org/carapace-replies"   # optional
    max_body_bytes = 262144

Every mistake is one ``ConfigError`` line naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from carapace.config import Home, Settings
from carapace.errors import ConfigError

DEFAULT_PORT = 8377
DEFAULT_MAX_BODY = 256 * 1024
MAX_MAX_BODY = 16 * 1024 * 1024
HOOK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_WEB_KEYS = {"enabled", "host", "port", "public_url", "behind_proxy", "tls_cert", "tls_key",
             "session_days", "hooks", "max_upload_bytes"}  # fmt: skip
_HOOK_KEYS = {"agent", "callback_url", "max_body_bytes", "replay_window_s"}


@dataclass(frozen=True)
class HookSettings:
    name: str
    agent: str | None = None
    callback_url: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    replay_window_s: int = 300

    @property
    def secret_key(self) -> str:
        """The variable holding this hook's secret in ``<home>/secrets.env``."""
        return hook_secret_key(self.name)


@dataclass(frozen=True)
class WebSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    public_url: str | None = None
    behind_proxy: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    session_days: float = 7.0
    max_upload_bytes: int = 8 * 1024 * 1024
    hooks: dict[str, HookSettings] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def secure_cookies(self) -> bool:
        return self.tls or self.behind_proxy

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def hook_secret_key(name: str) -> str:
    return "WEBHOOK_" + name.upper().replace("-", "_") + "_SECRET"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _where(home: Home | None, key: str) -> str:
    path = home.config_file if home is not None else Path("carapace.toml")
    return f"{path}: {key}"


def _bool(raw: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, not {value!r}")
    return value


def _str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key} must be a non-empty string, not {value!r}")
    return value.strip()


def _int(raw: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{key} must be a whole number from {lo} to {hi}, not {value!r}")
    return value


def _url(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} must be an http(s) URL, not {value!r}")
    return value


def web_settings(settings: Settings, home: Home | None = None) -> WebSettings:
    """``[web]`` of ``settings`` checked; ``ConfigError`` with one line on any mistake."""
    raw = settings.extra.get("web")
    if raw is None:
        return WebSettings()
    where = _where(home, "web")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table ([web])")
    unknown = sorted(set(raw) - _WEB_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_WEB_KEYS))})"
        )
    host = _str(raw, "host", where) or "127.0.0.1"
    ws = WebSettings(
        enabled=_bool(raw, "enabled", where, False),
        host=host,
        port=_int(raw, "port", where, DEFAULT_PORT, 0, 65535),
        public_url=_url(_str(raw, "public_url", where), f"{where}.public_url"),
        behind_proxy=_bool(raw, "behind_proxy", where, False),
        tls_cert=_str(raw, "tls_cert", where),
        tls_key=_str(raw, "tls_key", where),
        session_days=float(_int(raw, "session_days", where, 7, 1, 365)),
        max_upload_bytes=_int(raw, "max_upload_bytes", where, 8 * 1024 * 1024, 1, 256 << 20),
        hooks=_hooks(raw.get("hooks"), where),
    )
    if bool(ws.tls_cert) != bool(ws.tls_key):
        raise ConfigError(f"{where}: tls_cert and tls_key must be given together")
    if not is_loopback(host) and not ws.tls and not ws.behind_proxy:
        raise ConfigError(
            f"{where}.host = {host!r} is not a loopback address: set tls_cert and tls_key, "
            "or behind_proxy = true when a TLS-terminating proxy is in front"
        )
    for key in ("tls_cert", "tls_key"):
        value = getattr(ws, key)
        if value is not None and not Path(value).expanduser().is_file():
            raise ConfigError(f"{where}.{key}: no such file {value!r}")
    return ws


def _hooks(raw: Any, where: str) -> dict[str, HookSettings]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}.hooks must be a table ([web.hooks.NAME])")
    out: dict[str, HookSettings] = {}
    for name, table in raw.items():
        w = f"{where}.hooks.{name}"
        if not HOOK_NAME.match(str(name)):
            raise ConfigError(f"{w}: a hook name is 1-40 of a-z, 0-9, '-' and '_'")
        if not isinstance(table, dict):
            raise ConfigError(f"{w} must be a table")
        unknown = sorted(set(table) - _HOOK_KEYS)
        if unknown:
            raise ConfigError(
                f"{w}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_HOOK_KEYS))})"
            )
        out[name] = HookSettings(
            name=name,
            agent=_str(table, "agent", w),
            callback_url=_url(_str(table, "callback_url", w), f"{w}.callback_url"),
            max_body_bytes=_int(table, "max_body_bytes", w, DEFAULT_MAX_BODY, 1, MAX_MAX_BODY),
            replay_window_s=_int(table, "replay_window_s", w, 300, 1, 3600),
        )
    return out
