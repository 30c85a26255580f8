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
from carapace.timefmt import iso, parse_ts

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
    """Card expiry, cards for rows written without one, due card effects: looked at when
    kicked (new effects), when the central DB changed (another connection's commit, or
    this host's own writes), when the next card expiry or effect is due, and at least
    every :data:`EXPIRY_EVERY_S` (the three full looks every second were most of an idle
    host's CPU: ~0.35 ms a second).

    A change is told by the host's checkpointer (``host/checkpointer.py``: its thread
    looks at the file every second anyway, and kicks the pump when another connection,
    the loop's included, committed), so a quiet host's loop is not woken by the pump
    between due times at all (it was every second, for one ``PRAGMA``: most of an idle
    host's remaining wake-ups). Without a checkpointer that tells (before it starts, while
    its checkpoints fail, a host driven by hand) the pump looks for a change every
    :data:`PUMP_POLL_S`."""
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None] | None] = [None]
    kicked = [True]

    def wake() -> None:
        fut = waiter[0]
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_kick() -> None:
        kicked[0] = True
        wake()

    def kicker() -> None:
        loop.call_soon_threadsafe(on_kick)

    cards.KICKERS.append(kicker)
    last_full = last_expiry = -EXPIRY_EVERY_S
    seen: tuple[int, int] | None = None  # (data_version, total_changes) at the last look
    next_due: str | None = None  # the earliest pending expiry or effect then
    try:
        while not host._stopping:
            try:
                now = host.now()
                state = _db_state(host.db)
                if (kicked[0] or state != seen or loop.time() - last_full >= EXPIRY_EVERY_S
                        or (next_due is not None and next_due <= iso(now))):  # fmt: skip
                    kicked[0] = False
                    if loop.time() - last_expiry >= EXPIRY_EVERY_S or cards.expiry_due(
                        host.db, now
                    ):
                        approvals.expire_due(HostContext(host))
                        last_expiry = loop.time()
                    else:
                        approvals.adopt_orphans(HostContext(host))  # e.g. the admin's cli_command
                    await card_effects.pump(HostContext(host), host.adapters, host.route)
                    next_due = _next_due(host.db)
                    seen, last_full = _db_state(host.db), loop.time()
            except Exception:
                logger.exception("approval card pump failed")
                seen = None
            fut = waiter[0] = loop.create_future()
            timer = loop.call_later(_pump_wait(host, loop.time() - last_full, next_due), wake)
            if kicked[0]:
                wake()
            try:
                await fut
            finally:
                timer.cancel()
                waiter[0] = None
    finally:
        cards.KICKERS.remove(kicker)


def _pump_wait(host: Host, since_full: float, next_due: str | None) -> float:
    """Seconds until the pump looks again by itself: :data:`PUMP_POLL_S` without a
    checkpointer telling it of changes; else until the next card expiry or effect is due
    or :data:`EXPIRY_EVERY_S` after the last full look, never sooner than PUMP_POLL_S."""
    if host._checkpointer is None or not host._checkpointer.telling:
        return PUMP_POLL_S
    wait = EXPIRY_EVERY_S - since_full
    if next_due is not None:
        try:
            wait = min(wait, (parse_ts(next_due) - host.now()).total_seconds())
        except ValueError:
            wait = PUMP_POLL_S
    return max(PUMP_POLL_S, wait)


def _db_state(db: sqlite3.Connection) -> tuple[int, int]:
    """What changes when anything commits to the central DB: its ``data_version`` (another
    connection's commits) and this connection's own count of changes."""
    return int(db.execute("PRAGMA data_version").fetchone()[0]), db.total_changes


def _next_due(db: sqlite3.Connection) -> str | None:
    """The earliest time a pending card expires or a card effect is due (ISO, as stored)."""
    row = db.execute(
        "SELECT (SELECT MIN(expires_at) FROM carapace_cards WHERE status='pending' "
        "AND expires_at IS NOT NULL), (SELECT MIN(next_at) FROM carapace_card_effects "
        "WHERE done_at IS NULL)"
    ).fetchone()
    times = [t for t in row if isinstance(t, str)]
    return min(times) if times else None
