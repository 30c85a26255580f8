"""The host's side of the egress proxy: keys, the usage store, the per-session sockets.

``HostProxy.wrap(backend)`` is a ``RunnerBackend`` that opens the session's proxy socket
before each start (the backend binds it into the sandbox, or passes its path to an
unsandboxed runner); the host closes it when the runner exits (``session_ended``).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from carapace.config import Home, Settings
from carapace.db.groups import get_agent_group, get_container_config
from carapace.proxy.keys import KeyStore
from carapace.proxy.mcp_route import mcp_upstreams
from carapace.proxy.prices import PriceTable
from carapace.proxy.server import EgressProxy, SessionRoute, upstreams_for
from carapace.proxy.usage import UsageStore
from carapace.sandbox.process import RunnerBackend, RunnerHandle, RunnerSpec

logger = logging.getLogger(__name__)


def session_route(db: sqlite3.Connection, keys: KeyStore, spec: RunnerSpec) -> SessionRoute:
    """What the session's socket serves, from the host's DB (never from agent files)."""
    group = get_agent_group(db, spec.agent_group_id)
    cfg = get_container_config(db, spec.agent_group_id)
    settings = cfg.settings_dict() if cfg is not None else {}
    base_url = settings.get("base_url") if isinstance(settings.get("base_url"), str) else None
    provider = spec.provider or (cfg.provider if cfg is not None else None)
    return SessionRoute(
        session_id=spec.session_id,
        agent_group_id=spec.agent_group_id,
        group_name=group.name if group is not None else spec.agent_group_id,
        upstreams=upstreams_for(provider, base_url, keys),
        web=settings.get("web", True) is not False,
        web_private=settings.get("web_private", False) is True,
        mcp=mcp_upstreams(cfg.mcp_servers if cfg is not None else None),
    )


async def budget_warning(
    db: sqlite3.Connection,
    adapters: Mapping[str, Any],
    agent_group_id: str,
    text: str,
    now: datetime,
) -> None:
    """Send ``text`` to the first reachable of the group's admins/owners (logged always)."""
    from carapace.channels.base import OutboundMessage
    from carapace.permissions.access import pick_approval_delivery, pick_approver

    logger.warning("agent group %s: %s", agent_group_id, text)
    approvers = pick_approver(db, agent_group_id)
    target = await pick_approval_delivery(db, adapters, approvers, None, now=now)
    if target is None:
        logger.warning("budget warning for %s: no owner or admin reachable", agent_group_id)
        return
    adapter = adapters.get(target.messaging_group.channel_type)
    if adapter is None:
        return
    try:
        await adapter.deliver(
            target.messaging_group.platform_id, None, OutboundMessage("chat", {"text": text})
        )
    except Exception as exc:  # a channel's failure must not break the model call
        logger.warning("budget warning to %s not delivered: %s", target.user_id, exc)


class ProxiedBackend:
    def __init__(self, inner: RunnerBackend, proxy: HostProxy) -> None:
        self.inner = inner
        self.proxy = proxy
        self.name = inner.name
        if hasattr(inner, "note"):
            self.note = inner.note

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        route = session_route(self.proxy.db, self.proxy.keys, spec)
        path = self.proxy.egress.open_session(route)
        try:
            return await self.inner.start(dataclasses.replace(spec, proxy_socket=path))
        except BaseException:
            self.proxy.egress.session_ended(spec.session_id)
            raise


class HostProxy:
    def __init__(
        self,
        home: Home,
        db: sqlite3.Connection,
        settings: Settings,
        *,
        environ: Mapping[str, str] | None = None,
        on_warning: Callable[[str, str], Awaitable[None] | None] | None = None,
    ) -> None:
        self.db = db
        self.keys = KeyStore.load(home.root, environ)
        self.usage = UsageStore(home.central_db)
        self.egress = EgressProxy(
            self.keys, usage=self.usage, db=db, prices=PriceTable.from_settings(settings.extra),
            on_warning=on_warning,
        )  # fmt: skip

    def wrap(self, backend: RunnerBackend) -> RunnerBackend:
        return ProxiedBackend(backend, self)

    def default_provider(self) -> str | None:
        configured = self.keys.configured()
        return configured[0] if configured else None

    async def aclose(self) -> None:
        await self.egress.close()
        self.usage.close()

    def close(self) -> None:
        self.egress.release_dir()
        self.usage.close()
