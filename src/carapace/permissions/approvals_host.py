"""Plugging the approvals engine into a running ``Host``.

``install(host)`` (called from ``Host.start``) sets the router's hooks (unknown sender,
unknown channel, and the interceptor that takes card reply codes and new-agent names before
routing), registers the ``create_agent``/``install_packages``/``add_mcp_server`` system
actions, and — unless the host is driven by hand — starts the card pump: a task that runs
the queued card effects whenever a decision is committed (from any thread) and expires
cards. Tests drive the same work with ``await tick(host)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from carapace.channels.base import InboundEvent
from carapace.config import Home, Settings
from carapace.db import approvals as dba
from carapace.db.messaging import MessagingGroup
from carapace.db.sessions import Session, list_sessions
from carapace.permissions import (
    approvals,
    card_effects,
    cards,
    channel_approval,
    questions,
    sender_approval,
    system_actions,
)
from carapace.permissions.cards import SessionWriter

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger(__name__)

PUMP_POLL_S = 1.0
EXPIRY_EVERY_S = 30.0
_ACTIONS = ("create_agent", "install_packages", "add_mcp_server")


class HostContext:
    """The approvals ``Ctx`` on the host's event loop."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.home: Home = host.home
        self.settings: Settings = host.settings
        self.db: sqlite3.Connection = host.db
        self.sessions: SessionWriter = host.sessions

    def now(self) -> datetime:
        return self.host.now()

    def restart_group(self, agent_group_id: str, message: str | None = None) -> int:
        """Stop the group's runners; the next message (or the note) starts fresh ones."""
        n = 0
        for s in list_sessions(self.db, agent_group_id=agent_group_id, status="active"):
            if self.host.pool.is_running(s.id):
                self.host._spawn(self.host.pool.stop(s.id, "restart"))
                n += 1
        return n

    def wake_session(self, session_id: str) -> None:
        self.host.wake(session_id)


async def tick(host: Host) -> int:
    """Expire due cards and run due card effects once; returns the effects done."""
    ctx = HostContext(host)
    approvals.expire_due(ctx)
    total = 0
    while True:
        n = await card_effects.pump(ctx, host.adapters, host.route)
        total += n
        if n == 0:
            return total


def install(host: Host, *, background: bool = True) -> None:
    ctx = HostContext(host)
    questions.DEFAULT_TTL_S = float(host.settings.approval_ttl_s)

    async def on_sender(row: dba.PendingSenderApproval, event: InboundEvent) -> str | None:
        return sender_approval.adopt_held(ctx, row, event)

    async def on_channel(mg: MessagingGroup, event: InboundEvent) -> None:
        channel_approval.request_channel_approval(ctx, mg, event)

    async def intercept(event: InboundEvent) -> bool:
        # kept while the central DB is unchanged (db/memo.py; checked once per route)
        memo = host.sessions.memo
        naming = memo.get(("awaiting_name",), lambda: channel_approval.any_awaiting_name(ctx.db))

        def card_by_code(code: str) -> cards.Card | None:
            code = code.upper()
            return memo.get(("card", code), lambda: cards.get_by_code(ctx.db, code))

        return approvals.match_text_reply(ctx, event, naming=naming, card_by_code=card_by_code)

    host.router.on_sender_approval = on_sender
    host.router.on_channel_request = on_channel
    if hasattr(host.router, "on_intercept"):
        host.router.on_intercept = intercept

    def make_action(name: str) -> Any:
        async def handler(
            session: Session, content: dict[str, Any], inb: Any, now: datetime
        ) -> None:
            system_actions.handle_system_action(ctx, session.id, {**content, "action": name})

        return handler

    for action in _ACTIONS:
        host.actions.register(action, make_action(action))
    if background:
        host._spawn(_pump_loop(host))


async def _pump_loop(host: Host) -> None:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def kicker() -> None:
        loop.call_soon_threadsafe(event.set)

    cards.KICKERS.append(kicker)
    last_expiry = 0.0
    try:
        while not host._stopping:  # a cancellation swallowed by 3.11's wait_for still ends it
            event.clear()
            try:
                if loop.time() - last_expiry >= EXPIRY_EVERY_S or cards.expiry_due(
                    host.db, host.now()
                ):
                    approvals.expire_due(HostContext(host))
                    last_expiry = loop.time()
                else:
                    approvals.adopt_orphans(HostContext(host))  # e.g. the admin's cli_command
                await card_effects.pump(HostContext(host), host.adapters, host.route)
            except Exception:
                logger.exception("approval card pump failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), PUMP_POLL_S)
    finally:
        cards.KICKERS.remove(kicker)
