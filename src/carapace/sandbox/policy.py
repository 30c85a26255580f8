"""Which backend starts each runner: the host default and the agent group's override.

Host default (``carapace.toml``)::

    runner_backend = "auto"        # or "bwrap" / "subprocess"
    bwrap = "bwrap"                # the bubblewrap executable (name on PATH or a path)

``auto`` is the strongest backend available (``bwrap`` when it can make a sandbox here,
else ``subprocess``). A forced ``bwrap`` that cannot work is a ``ConfigError`` at startup.

Per agent group (``container_configs.settings``, JSON)::

    {"sandbox": "auto" | "bwrap" | "subprocess" | "none", "network": true | false}

``sandbox``: ``auto`` (or absent) follows the host default; ``bwrap`` requires the sandbox
(the runner does not start when bwrap is unusable); ``subprocess``/``none`` run this group
without isolation. ``network`` (default false: model calls and ``web_fetch`` go through
the host's egress proxy) grants bwrap's ``--share-net``, the host's network namespace. ``container_configs.additional_mounts`` go through ``validate_mounts`` with the
home's ``mount_allowlist``; refusals are logged and the runner starts without them.

``SandboxBackend`` is one ``RunnerBackend`` for the pool: it picks per spawn, so the pool
needs no knowledge of sandboxes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from carapace.config import Settings
from carapace.db.groups import ContainerConfig
from carapace.errors import ConfigError
from carapace.jsonutil import loads_or
from carapace.limits import limits_of
from carapace.sandbox.bwrap import BwrapBackend, bwrap_unusable_reason, resolve_backend
from carapace.sandbox.mounts import Mount, load_allowlist, validate_mounts
from carapace.sandbox.process import RunnerBackend, RunnerHandle, RunnerSpec, SubprocessBackend

logger = logging.getLogger(__name__)

GROUP_SANDBOX_VALUES = ("auto", "bwrap", "subprocess", "none")

ConfigLookup = Callable[[str], ContainerConfig | None]


def group_sandbox(settings: Mapping[str, object]) -> str:
    """The group's ``settings.sandbox`` (``auto`` when absent); ``ConfigError`` when bad."""
    raw = settings.get("sandbox", "auto")
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in GROUP_SANDBOX_VALUES:
        raise ConfigError(
            f"bad settings.sandbox {raw!r} (known: {', '.join(GROUP_SANDBOX_VALUES)})"
        )
    return str(value)


def group_network(settings: Mapping[str, object]) -> bool:
    """``settings.network``: off unless explicitly ``true``."""
    return settings.get("network", False) is True


def group_mounts(home: Path, cfg: ContainerConfig | None) -> list[Mount]:
    """The group's ``additional_mounts`` that pass the home's allowlist (refusals logged)."""
    if cfg is None:
        return []
    requests = loads_or(cfg.additional_mounts, [])
    if not isinstance(requests, list) or not requests:
        return []
    try:
        roots = load_allowlist(home)
    except ConfigError as exc:
        logger.warning("additional mounts of agent group %s refused: %s", cfg.agent_group_id, exc)
        return []
    return validate_mounts(requests, roots, context=f"agent group {cfg.agent_group_id}", home=home)


class SandboxBackend:
    """The host's runner backend: ``bwrap`` or ``subprocess`` per agent group."""

    def __init__(
        self,
        home: Path,
        settings: Settings,
        group_config: ConfigLookup,
        *,
        python: str | None = None,
    ) -> None:
        self.home = home
        self.bwrap_path = settings.bwrap
        self.default, self.why = resolve_backend(settings.runner_backend, settings.bwrap)
        self.name = self.default
        self.group_config = group_config
        self.subprocess = SubprocessBackend(python=python, spare=settings.runner_spare)
        self.bwrap = BwrapBackend(
            home, network=self._network, mounts_for=self._mounts, python=python,
            bwrap=settings.bwrap, spare=settings.runner_spare,
        )  # fmt: skip
        self.used: dict[str, str] = {}  # session id -> backend of its last start

    @property
    def note(self) -> str:
        """One line for the log and ``carapace run``: which backend, and why."""
        return f"{self.default} ({self.why})"

    def _settings(self, spec: RunnerSpec) -> dict[str, object]:
        cfg = self.group_config(spec.agent_group_id)
        return cfg.settings_dict() if cfg is not None else {}

    def _network(self, spec: RunnerSpec) -> bool:
        return group_network(self._settings(spec))

    def _mounts(self, spec: RunnerSpec) -> Sequence[Mount]:
        return group_mounts(self.home, self.group_config(spec.agent_group_id))

    def backend_for(self, spec: RunnerSpec) -> str:
        """``bwrap`` or ``subprocess`` for this spawn; ``ConfigError`` if it cannot start."""
        choice = group_sandbox(self._settings(spec))
        if choice == "auto":
            return self.default
        if choice in ("subprocess", "none"):
            return "subprocess"
        reason = bwrap_unusable_reason(self.bwrap_path)
        if reason is not None:
            raise ConfigError(
                f"agent group {spec.agent_group_id} requires sandbox bwrap, unusable: {reason}"
            )
        return "bwrap"

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        spec = dataclasses.replace(spec, limits=limits_of(self._settings(spec)))
        try:
            name = self.backend_for(spec)
        except ConfigError as exc:
            logger.error("session %s: runner not started: %s", spec.session_id, exc)
            raise
        if name != self.default:
            logger.info("session %s: agent group %s runs with backend %s (group setting)",
                        spec.session_id, spec.agent_group_id, name)  # fmt: skip
        self.used[spec.session_id] = name
        if name == "bwrap":
            return await self.bwrap.start(spec)
        # Never let an inherited variable make an unisolated runner believe it is sandboxed.
        env = {**spec.env, "CARAPACE_SANDBOX": "none"}
        return await self.subprocess.start(dataclasses.replace(spec, env=env))


if TYPE_CHECKING:  # SandboxBackend satisfies the pool's seam
    _backend: RunnerBackend = SandboxBackend(Path(), Settings(), lambda gid: None)
