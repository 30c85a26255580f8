"""Unknown senders on a ``request_approval`` chat (spec/host.md §6.5, §3.4).

The refused message is held in ``pending_sender_approvals.original_message`` (one row per
(chat, sender): a race-safe ``INSERT OR IGNORE``, so concurrent refusals by several wirings
make one card). The card goes to the first reachable approver of the agent group. Allow adds
the sender as a member and replays the held message through the router; Deny drops it and
refuses further cards for that sender in that chat for ``settings.deny_ttl_s``. Both, and
the expiry after ``settings.approval_ttl_s``, edit the card.

Deviations from NanoClaw: a deny is remembered for a while (NanoClaw re-prompts at the next
message); cards expire (§11.3 item 29); only the approver or an admin of the group decides,
and an unauthorised click is answered "not authorised" and changes nothing (§11.2 item 21).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from carapace.channels.base import InboundEvent
from carapace.db import approvals as dba
from carapace.db import users
from carapace.db.connection import transaction
from carapace.db.messaging import MessagingGroup, get_messaging_group
from carapace.jsonutil import dumps
from carapace.permissions import access, cards
from carapace.permissions.cards import Ctx, Outcome
from carapace.timefmt import iso

logger = logging.getLogger(__name__)

TITLE = "👤 New sender"
OPTIONS: list[Any] = [
    {"label": "Allow", "selectedLabel": "✅ Allowed", "value": "approve"},
    {"label": "Deny", "selectedLabel": "❌ Denied", "value": "reject"},
]


def is_denied(db: Any, messaging_group_id: str, sender_identity: str, now: datetime) -> bool:
    row = db.execute(
        "SELECT 1 FROM carapace_denied_senders WHERE messaging_group_id=? AND sender_identity=? "
        "AND denied_until > ?",
        (messaging_group_id, sender_identity, iso(now)),
    ).fetchone()
    return row is not None


def remember_denial(
    ctx: Ctx, messaging_group_id: str, sender_identity: str, by: str | None, now: datetime
) -> None:
    until = now + timedelta(seconds=float(ctx.settings.deny_ttl_s))
    ctx.db.execute(
        "INSERT INTO carapace_denied_senders (messaging_group_id, sender_identity, denied_until, "
        "denied_by, denied_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(messaging_group_id, "
        "sender_identity) DO UPDATE SET denied_until=excluded.denied_until, "
        "denied_by=excluded.denied_by, denied_at=excluded.denied_at",
        (messaging_group_id, sender_identity, iso(until), by, iso(now)),
    )


def forget_denial(ctx: Ctx, messaging_group_id: str, sender_identity: str) -> bool:
    cur = ctx.db.execute(
        "DELETE FROM carapace_denied_senders WHERE messaging_group_id=? AND sender_identity=?",
        (messaging_group_id, sender_identity),
    )
    return cur.rowcount > 0


def _question(mg: MessagingGroup, sender_identity: str, sender_name: str | None) -> str:
    where = mg.name or f"a {mg.channel_type} channel"
    return f"{sender_name or sender_identity} wants to talk to your agent in {where}. Allow?"


def _card_for(
    ctx: Ctx, row: dba.PendingSenderApproval, mg: MessagingGroup, now: datetime
) -> cards.Card | None:
    approvers = access.pick_approver(ctx.db, row.agent_group_id)
    if not approvers:
        logger.warning("no owner or admin to approve sender %s in %s; message dropped",
                       row.sender_identity, mg.id)  # fmt: skip
        dba.delete_sender_approval(ctx.db, row.id)
        return None
    return cards.create_card(
        ctx.db, row.id, "sender", title=TITLE,
        question=_question(mg, row.sender_identity, row.sender_name), options=OPTIONS, now=now,
        expires_at=cards.expiry(ctx, now), agent_group_id=row.agent_group_id,
        candidates=approvers, origin_channel_type=mg.channel_type,
    )  # fmt: skip


def request_sender_approval(
    ctx: Ctx,
    mg: MessagingGroup,
    agent_group_id: str,
    sender_identity: str,
    sender_name: str | None,
    event: InboundEvent,
) -> str | None:
    """Hold the message and queue one card; None when a card is pending already, the sender
    was denied recently, or nobody can approve."""
    now = ctx.now()
    if is_denied(ctx.db, mg.id, sender_identity, now):
        logger.info("sender %s denied recently in %s; message dropped", sender_identity, mg.id)
        return None
    approvers = access.pick_approver(ctx.db, agent_group_id)
    if not approvers:
        logger.warning("no owner or admin to approve sender %s; message dropped", sender_identity)
        return None
    with transaction(ctx.db):
        row = dba.create_sender_approval(
            ctx.db, mg.id, agent_group_id, sender_identity, event.to_json(), approvers[0],
            sender_name=sender_name, title=TITLE, options=OPTIONS, now=now,
        )  # fmt: skip
        if row is None:
            return None  # one card per (chat, sender)
        card = _card_for(ctx, row, mg, now)
    cards.kick()
    return None if card is None else row.id


def adopt_held(ctx: Ctx, row: dba.PendingSenderApproval, event: InboundEvent) -> str | None:
    """The router's hook: ``row`` holds ``event`` (the router has just inserted it, the
    winner of the race) or is the pending row of this sender in this chat (a later message:
    kept with it, replayed after it on approval). Give it the card; drop it when the sender
    was denied recently or nobody can approve. Returns the row's id while it is held."""
    now = ctx.now()
    mg = get_messaging_group(ctx.db, row.messaging_group_id)
    first = _event(row)
    first_id = first.get("message", {}).get("id") if isinstance(first, dict) else None
    if event.message.id != first_id and cards.get_card(ctx.db, row.id) is not None:
        with transaction(ctx.db):
            if dba.get_sender_approval(ctx.db, row.id) is None:
                return None  # decided meanwhile
            if cards.hold(ctx.db, row.id, event.to_json(), now=now):
                logger.info("message %s of sender %s kept with pending approval %s",
                            event.message.id, row.sender_identity, row.id)  # fmt: skip
        return row.id
    with transaction(ctx.db):
        if mg is None or is_denied(ctx.db, row.messaging_group_id, row.sender_identity, now):
            dba.delete_sender_approval(ctx.db, row.id)
            logger.info("sender %s denied recently; held message %s dropped",
                        row.sender_identity, event.message.id)  # fmt: skip
            return None
        ctx.db.execute(
            "UPDATE pending_sender_approvals SET title=?, options_json=? WHERE id=?",
            (TITLE, dumps(dba.normalize_options(OPTIONS)), row.id),
        )
        if cards.get_card(ctx.db, row.id) is not None:
            return row.id
        card = _card_for(ctx, row, mg, now)
    cards.kick()
    return None if card is None else row.id


def authorised(ctx: Ctx, row: dba.PendingSenderApproval, clicker: str) -> bool:
    return clicker == row.approver_user_id or access.has_admin_privilege(
        ctx.db, clicker, row.agent_group_id
    )


def decide_sender(ctx: Ctx, row: dba.PendingSenderApproval, value: str, clicker: str) -> Outcome:
    now = ctx.now()
    if not authorised(ctx, row, clicker):
        return Outcome(row.id, "sender", "unauthorised", cards.NOT_AUTHORISED)
    with transaction(ctx.db):
        if not dba.delete_sender_approval(ctx.db, row.id):
            return Outcome(row.id, "sender", "gone", "This request was decided already.")
        if value == "approve":
            if users.get_user(ctx.db, row.sender_identity) is None:
                kind = row.sender_identity.split(":", 1)[0]
                users.upsert_user(ctx.db, row.sender_identity, kind, row.sender_name, now=now)
            users.add_member(ctx.db, row.sender_identity, row.agent_group_id, added_by=clicker,
                             now=now)  # fmt: skip
            forget_denial(ctx, row.messaging_group_id, row.sender_identity)
            cards.finish_card(ctx.db, row.id, "approved", now=now, by=clicker, decision=value,
                              label="✅ Allowed")  # fmt: skip
            cards.enqueue(ctx.db, "replay", {"event": _event(row)}, card_id=row.id, now=now)
            cards.release_held(ctx.db, row.id, now=now)
            logger.info("sender %s allowed into %s by %s; replaying %s", row.sender_identity,
                        row.agent_group_id, clicker, row.id)  # fmt: skip
            return Outcome(row.id, "sender", "approved",
                           f"{row.sender_name or row.sender_identity} allowed.")  # fmt: skip
        remember_denial(ctx, row.messaging_group_id, row.sender_identity, clicker, now)
        cards.drop_held(ctx.db, row.id, now=now, why="sender denied")
        cards.finish_card(ctx.db, row.id, "rejected", now=now, by=clicker, decision=value,
                          label="❌ Denied")  # fmt: skip
    logger.info("sender %s denied in %s by %s", row.sender_identity, row.messaging_group_id,
                clicker)  # fmt: skip
    return Outcome(
        row.id, "sender", "rejected", f"{row.sender_name or row.sender_identity} denied."
    )


def _event(row: dba.PendingSenderApproval) -> Any:
    import json

    return json.loads(row.original_message)


def expire_sender(ctx: Ctx, card: cards.Card, now: datetime) -> None:
    """The card expired: the held messages are dropped, a new message makes a new card."""
    dba.delete_sender_approval(ctx.db, card.card_id)
    cards.drop_held(ctx.db, card.card_id, now=now, why="approval expired")


def cancel_sender(ctx: Ctx, card: cards.Card) -> None:
    dba.delete_sender_approval(ctx.db, card.card_id)
    cards.drop_held(ctx.db, card.card_id, now=ctx.now(), why="nobody can approve")


cards.UNDELIVERABLE["sender"] = cancel_sender
