"""The channel adapters that exist, by channel type, and the one place that starts them.

``ADAPTERS`` is the list every place that names adapters reads (``migrate-v1``'s report,
``doctor``, ``channels list``, the docs' claims). Add an adapter here when it works, and
only then: a chat on any other channel type is inert, and says so.

Each adapter module exposes:

* ``SECRET_KEYS: tuple[str, ...]`` — the names it needs in ``<home>/secrets.env`` (the host's
  environment overrides the file, as for provider keys); an adapter with several ways to
  connect also has ``MODES: dict[str, tuple[str, ...]]`` (mode → its names; ``SECRET_KEYS``
  is the default mode's), chosen with ``carapace channels add TYPE --mode M``;
* ``from_home(home, secrets, settings) -> ChannelAdapter | None`` — None when it is not
  configured (so not started);
* ``async verify(secrets, *, base_url=None) -> str`` — checks the credentials against the
  platform and returns the bot's identity, or raises a ``CarapaceError`` with a one-line
  reason (``carapace channels add``).

``build_adapters(home, settings)`` returns what the host starts. An adapter that cannot be
built is logged once and recorded as ``failed`` in ``data/channels.json`` (read by
``carapace channels list`` and ``doctor``); the host serves the others. The running host
records each adapter's state there too (``running``, ``failed: <reason>``, ``stopped``).

A per-adapter base URL (tests, self-hosted Bot API servers) comes from
``CARAPACE_<TYPE>_BASE_URL`` or ``carapace.toml``'s ``[channels.<type>] base_url``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from carapace.channels.base import ChannelAdapter
from carapace.config import Home, Settings
from carapace.errors import CarapaceError, ConfigError
from carapace.timefmt import iso

logger = logging.getLogger(__name__)

#: channel type → the module holding its adapter (the test-only ``fake`` is not listed).
ADAPTERS: dict[str, str] = {
    "cli": "carapace.channels.cli",
    "discord": "carapace.channels.discord",
    "slack": "carapace.channels.slack",
    "telegram": "carapace.channels.telegram",
    "web": "carapace.web.channel",
    "webhook": "carapace.web.hooks",
}

STATE_FILE = "channels.json"


def available_channels() -> tuple[str, ...]:
    """Channel types carapace has an adapter for, sorted."""
    return tuple(sorted(ADAPTERS))


def secret_keys(module: ModuleType, mode: str | None = None) -> tuple[str, ...]:
    """The secrets ``mode`` needs (the default mode's when None); every mode's with
    ``mode="*"`` (what the host loads, and ``channels remove`` deletes)."""
    modes: dict[str, tuple[str, ...]] = dict(getattr(module, "MODES", {}))
    default = tuple(getattr(module, "SECRET_KEYS", ()))
    if mode is None:
        return default
    if mode == "*":
        return tuple(dict.fromkeys([*default, *(k for keys in modes.values() for k in keys)]))
    if mode not in modes:
        name = getattr(module, "CHANNEL", module.__name__.rsplit(".", 1)[-1])
        known = f"its modes: {', '.join(sorted(modes))}" if modes else "it has one mode"
        raise ConfigError(f"{name} has no mode {mode!r} ({known})")
    return modes[mode]


def adapter_module(channel_type: str) -> ModuleType:
    module = ADAPTERS.get(channel_type)
    if module is None:
        raise ConfigError(
            f"no channel adapter {channel_type!r} (there are: {', '.join(available_channels())})"
        )
    return importlib.import_module(module)


def channel_settings(settings: Settings, channel_type: str) -> dict[str, Any]:
    """``carapace.toml``'s ``[channels.<type>]`` table ({} when absent)."""
    chans = settings.extra.get("channels", {})
    if not isinstance(chans, dict):
        raise ConfigError("carapace.toml: [channels] must be a table")
    entry = chans.get(channel_type, {})
    if not isinstance(entry, dict):
        raise ConfigError(f"carapace.toml: [channels.{channel_type}] must be a table")
    return entry


def base_url(
    settings: Settings, channel_type: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """The adapter's API base URL override: env ``CARAPACE_<TYPE>_BASE_URL``, else the
    ``base_url`` of ``[channels.<type>]``, else None (the platform's own)."""
    env = os.environ if environ is None else environ
    value = env.get(f"CARAPACE_{channel_type.upper()}_BASE_URL")
    if value:
        return value
    value = channel_settings(settings, channel_type).get("base_url")
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"carapace.toml: [channels.{channel_type}] base_url must be a string")
    return value or None


def load_secrets(
    home: Home, keys: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The adapter's secrets: ``<home>/secrets.env``, the host environment overriding."""
    from carapace.secretsfile import SECRETS_FILE, read_secrets_file

    env = os.environ if environ is None else environ
    values = read_secrets_file(home.root / SECRETS_FILE) if keys else {}
    out = {k: values[k] for k in keys if values.get(k)}
    out.update({k: env[k] for k in keys if env.get(k)})
    return out


def build_adapters(
    home: Home, settings: Settings, *, environ: Mapping[str, str] | None = None
) -> list[ChannelAdapter]:
    """Every configured adapter, built (not started). One that cannot be built is logged
    once and recorded as failed; the others are returned all the same."""
    out: list[ChannelAdapter] = []
    for channel_type in available_channels():
        try:
            module = adapter_module(channel_type)
            secrets = load_secrets(home, secret_keys(module, "*"), environ)
            adapter = module.from_home(home, secrets, settings)
        except Exception as exc:  # one adapter's trouble never stops the host
            reason = str(exc) if isinstance(exc, CarapaceError) else f"{type(exc).__name__}: {exc}"
            logger.error("channel %s not started: %s", channel_type, reason)
            record_state(home, channel_type, "failed", reason)
            continue
        if adapter is None:
            record_state(home, channel_type, "not configured", None)
            continue
        out.append(adapter)
    return out


# --- state shown by `channels list` and `doctor` -------------------------------------------


def _state_path(home: Home) -> str:
    return str(home.data_dir / STATE_FILE)


def read_states(home: Home) -> dict[str, dict[str, Any]]:
    try:
        with open(_state_path(home), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, dict)}


def record_state(home: Home, channel_type: str, state: str, detail: str | None) -> None:
    """Write one adapter's state (atomic replace; a failure to write is only logged)."""
    states = read_states(home)
    states[channel_type] = {"state": state, "detail": detail, "at": iso()}
    path = _state_path(home)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        home.data_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(states, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot record channel state in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@dataclass(frozen=True)
class ChannelInfo:
    channel_type: str
    configured: bool
    state: str  # what the host last recorded: running | failed | stopped | not configured | -
    detail: str | None
    missing: tuple[str, ...]  # secret names not set

    def to_json(self) -> dict[str, Any]:
        return {"channel_type": self.channel_type, "configured": self.configured,
                "state": self.state, "detail": self.detail, "missing": list(self.missing)}  # fmt: skip


def list_channels(home: Home, environ: Mapping[str, str] | None = None) -> list[ChannelInfo]:
    """Each adapter carapace has: configured or not, and its last recorded state."""
    states = read_states(home)
    out = []
    for channel_type in available_channels():
        module = adapter_module(channel_type)
        have = load_secrets(home, secret_keys(module, "*"), environ)
        modes = [secret_keys(module), *getattr(module, "MODES", {}).values()]
        complete = any(all(k in have for k in keys) for keys in modes)
        missing = () if complete else tuple(k for k in secret_keys(module) if k not in have)
        st = states.get(channel_type, {})
        state = str(st.get("state") or "-")
        detail = st.get("detail") if isinstance(st.get("detail"), str) else None
        out.append(ChannelInfo(channel_type, not missing, state, detail, missing))
    return out
