"""Unknown channels: an addressed message in a chat with no wiring (spec/host.md §6.6).

One registration card per chat (race-safe ``INSERT OR IGNORE`` on
``pending_channel_approvals``) goes to the first reachable approver. Its answers:
``connect:<agent group id>`` wires the chat (engage ``mention-sticky`` in a thread, else
``pattern '.'``), admits the sender and replays the message; ``choose_existing`` turns the
card into a pick-an-agent card; ``new_agent`` asks for a name in the approver's chat and the
next message there from the approver creates the group and connects it; ``reject`` marks the
chat denied. The name conversation is a row of ``carapace_channel_registrations``, so a
restart in the middle keeps it (NanoClaw kept it in memory, §11.3 item 28), and the card
expires like every other (§11.3 item 29).

Deviations from NanoClaw: the reference group (whose admins may decide) is the earliest
created group, as NanoClaw's comment says (its code took the alphabetically first, §11.1 item
17); a scoped admin may only connect the chat to a group they administer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime
from typing import Any

from carapace.bootstrap import ensure_group_folder
from carapace.channels.base import InboundEvent
from carapace.db import approvals as dba
from carapace.db import groups, messaging, users
from carapace.db.connection import transaction
from carapace.db.groups import AgentGroup
from carapace.db.messaging import MessagingGroup
from carapace.db.migrations_nanoclaw import normalize_name
from carapace.errors import CarapaceError, ConflictError
from carapace.jsonutil import dumps
from carapace.permissions import access, cards
from carapace.permissions.cards import Ctx, Outcome
from carapace.timefmt import iso

logger = logging.getLogger(__name__)

NAME_PROMPT = "Reply with the name for your new agent:"


def reference_group(ctx: Ctx) -> AgentGroup | None:
    rows = ctx.db.execute("SELECT id FROM agent_groups ORDER BY created_at, id LIMIT 1")
    row = rows.fetchone()
    return None if row is None else groups.get_agent_group(ctx.db, row[0])


def _options(all_groups: list[AgentGroup]) -> list[Any]:
    if len(all_groups) == 1:
        g = all_groups[0]
        first = {"label": f"Connect to {g.name}", "selectedLabel": f"✅ Connected to {g.name}",
                 "value": f"connect:{g.id}"}  # fmt: skip
    else:
        first = {"label": "Choose existing agent", "selectedLabel": "📋 Choosing…",
                 "value": "choose_existing"}  # fmt: skip
    return [
        first,
        {"label": "Connect new agent", "selectedLabel": "🆕 Connecting new agent…",
         "value": "new_agent"},
        {"label": "Reject", "selectedLabel": "🙅 Rejected", "value": "reject"},
    ]  # fmt: skip


def _texts(mg: MessagingGroup, event: InboundEvent) -> tuple[str, str]:
    is_group = event.message.is_group
    if is_group is None:
        is_group = bool(mg.is_group)
    _, name = access.event_sender(event.channel_type, event.message.content)
    who = name or "Someone"
    if is_group:
        where = f"{mg.name} on {mg.channel_type}" if mg.name else f"a {mg.channel_type} channel"
        return ("📣 Bot mentioned in new channel",
                f"{who} mentioned your bot in {where}. How would you like to handle this channel?")  # fmt: skip
    return ("💬 New direct message",
            f"{who} sent your bot a DM on {mg.channel_type}. How would you like to handle it?")  # fmt: skip


def request_channel_approval(ctx: Ctx, mg: MessagingGroup, event: InboundEvent) -> bool:
    """Hold the message and queue one registration card; False when one is pending, the
    chat was rejected, or nobody can approve."""
    now = ctx.now()
    if mg.denied_at:
        return False
    ref = reference_group(ctx)
    if ref is None:
        logger.warning("no agent group to connect %s to; message dropped", mg.id)
        return False
    approvers = access.pick_approver(ctx.db, ref.id)
    if not approvers:
        logger.warning("no owner or admin to register %s; message dropped", mg.id)
        return False
    title, question = _texts(mg, event)
    options = _options(groups.list_agent_groups(ctx.db))
    with transaction(ctx.db):
        row = dba.create_channel_approval(
            ctx.db, mg.id, ref.id, event.to_json(), approvers[0], title=title, options=options,
            now=now,
        )  # fmt: skip
        if row is None:
            return False
        cards.create_card(
            ctx.db, mg.id, "channel", title=title, question=question, options=options, now=now,
            expires_at=cards.expiry(ctx, now), agent_group_id=ref.id, candidates=approvers,
            origin_channel_type=mg.channel_type,
        )  # fmt: skip
    logger.info("registration card queued for %s (%s)", mg.id, title)
    cards.kick()
    return True


def authorised(ctx: Ctx, row: dba.PendingChannelApproval, value: str, clicker: str) -> bool:
    if clicker == row.approver_user_id or access.has_admin_privilege(ctx.db, clicker, None):
        return True
    if value.startswith("connect:"):
        return access.has_admin_privilege(ctx.db, clicker, value.split(":", 1)[1])
    return value in ("reject", "choose_existing") and access.has_admin_privilege(
        ctx.db, clicker, row.agent_group_id
    )


def decide_channel(ctx: Ctx, row: dba.PendingChannelApproval, value: str, clicker: str) -> Outcome:
    mg_id = row.messaging_group_id
    if not authorised(ctx, row, value, clicker):
        return Outcome(mg_id, "channel", "unauthorised", cards.NOT_AUTHORISED)
    now = ctx.now()
    if value == "reject":
        with transaction(ctx.db):
            dba.delete_channel_approval(ctx.db, mg_id)
            ctx.db.execute("DELETE FROM carapace_channel_registrations WHERE messaging_group_id=?",
                           (mg_id,))  # fmt: skip
            ctx.db.execute("UPDATE messaging_groups SET denied_at=? WHERE id=?", (iso(now), mg_id))
            cards.finish_card(ctx.db, mg_id, "rejected", now=now, by=clicker, decision=value,
                              label="🙅 Rejected")  # fmt: skip
        return Outcome(mg_id, "channel", "rejected", "Channel rejected.")
    if value == "choose_existing":
        return _choose_existing(ctx, row, clicker, now)
    if value == "new_agent":
        card = cards.get_card(ctx.db, mg_id)
        if card is None or not card.channel_type or not card.platform_id:
            return Outcome(mg_id, "channel", "invalid", "The card has not been delivered yet.")
        with transaction(ctx.db):
            ctx.db.execute(
                "INSERT OR REPLACE INTO carapace_channel_registrations (messaging_group_id, "
                "approver_user_id, channel_type, platform_id, thread_id, stage, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'awaiting_name', ?)",
                (mg_id, clicker, card.channel_type, card.platform_id, card.thread_id, iso(now)),
            )
            cards.enqueue(ctx.db, "edit_card",
                          {"text": f"{card.title}\n\n🆕 Connecting new agent…"}, card_id=mg_id,
                          now=now)  # fmt: skip
            cards.send_text(ctx.db, card.channel_type, card.platform_id, card.thread_id,
                            NAME_PROMPT, now=now)  # fmt: skip
        return Outcome(mg_id, "channel", "pending", NAME_PROMPT)
    if value.startswith("connect:"):
        target = groups.get_agent_group(ctx.db, value.split(":", 1)[1])
        if target is None:
            return Outcome(mg_id, "channel", "invalid", f"No agent group {value[8:]!r}.")
        return connect(ctx, row, target, clicker, now)
    return Outcome(mg_id, "channel", "invalid", f"Unknown answer {value!r}.")


def _choose_existing(
    ctx: Ctx, row: dba.PendingChannelApproval, clicker: str, now: datetime
) -> Outcome:
    mg_id = row.messaging_group_id
    card = cards.get_card(ctx.db, mg_id)
    options: list[Any] = [
        {"label": g.name, "selectedLabel": f"✅ Connected to {g.name}", "value": f"connect:{g.id}"}
        for g in groups.list_agent_groups(ctx.db)
    ]
    options.append({"label": "Cancel", "selectedLabel": "🙅 Cancelled", "value": "reject"})
    title = "📋 Choose an agent"
    norm = dumps(dba.normalize_options(options))
    with transaction(ctx.db):
        ctx.db.execute(
            "UPDATE pending_channel_approvals SET title=?, options_json=? WHERE messaging_group_id=?",
            (title, norm, mg_id),
        )
        if card is not None:
            cards.enqueue(ctx.db, "edit_card", {"text": f"{card.title}\n\n📋 Choosing…"},
                          card_id=mg_id, now=now)  # fmt: skip
            cards.update_card(ctx.db, mg_id, title=title, options_json=norm,
                              question="Which agent should handle this channel?")  # fmt: skip
            cards.enqueue(ctx.db, "deliver_card", {}, card_id=mg_id, now=now)
    return Outcome(mg_id, "channel", "pending", "Choose an agent for this channel.")


def connect(
    ctx: Ctx, row: dba.PendingChannelApproval, target: AgentGroup, clicker: str, now: datetime
) -> Outcome:
    """Wire the chat to ``target``, admit the sender, replay the held message."""
    mg_id = row.messaging_group_id
    event: dict[str, Any] = json.loads(row.original_message)
    threaded = event.get("threadId") is not None
    with transaction(ctx.db):
        if not dba.delete_channel_approval(ctx.db, mg_id):
            return Outcome(mg_id, "channel", "gone", "This request was decided already.")
        ctx.db.execute("DELETE FROM carapace_channel_registrations WHERE messaging_group_id=?",
                       (mg_id,))  # fmt: skip
        try:
            messaging.create_wiring(
                ctx.db, mg_id, target.id,
                engage_mode="mention-sticky" if threaded else "pattern",
                engage_pattern=None if threaded else ".", sender_scope="known",
                ignored_message_policy="accumulate", now=now,
            )  # fmt: skip
        except ConflictError:
            pass
        ctx.db.execute("UPDATE messaging_groups SET denied_at=NULL WHERE id=?", (mg_id,))
        ct = str(event.get("channelType") or "")
        sender, name = access.event_sender(ct, str((event.get("message") or {}).get("content")))
        if sender is not None:
            try:
                if users.get_user(ctx.db, sender) is None:
                    users.upsert_user(ctx.db, sender, ct, name, now=now)
                users.add_member(ctx.db, sender, target.id, added_by=clicker, now=now)
            except CarapaceError as exc:
                logger.warning("could not admit %s to %s: %s", sender, target.id, exc)
        cards.finish_card(ctx.db, mg_id, "approved", now=now, by=clicker,
                          decision=f"connect:{target.id}",
                          label=f"✅ Connected to {target.name}")  # fmt: skip
        cards.enqueue(ctx.db, "replay", {"event": event}, card_id=mg_id, now=now)
    logger.info("chat %s connected to %s by %s", mg_id, target.id, clicker)
    return Outcome(mg_id, "channel", "approved", f"Connected to {target.name}.")


def create_named_group(
    ctx: Ctx, name: str, now: datetime, instructions: str | None = None
) -> AgentGroup:
    """A new agent group with a free folder derived from ``name`` and its files."""
    base = normalize_name(name)[:56] or "agent"
    folder, n = base, 1
    while groups.get_agent_group_by_folder(ctx.db, folder) is not None:
        n += 1
        folder = f"{base}-{n}"
    group = groups.create_agent_group(ctx.db, name, folder, now=now)
    path = ensure_group_folder(ctx.home, folder, name)
    if instructions:
        (path / "CLAUDE.local.md").write_text(instructions + "\n", encoding="utf-8")
    return group


def any_awaiting_name(db: sqlite3.Connection) -> bool:
    """Whether any registration waits for its approver to name the new agent (the router
    skips :func:`consume_name_reply` for every message while none does)."""
    return (
        db.execute(
            "SELECT 1 FROM carapace_channel_registrations WHERE stage='awaiting_name' LIMIT 1"
        ).fetchone()
        is not None
    )


def consume_name_reply(ctx: Ctx, event: InboundEvent, clicker: str | None) -> bool:
    """The approver's next message in the registration chat names the new agent."""
    row = ctx.db.execute(
        "SELECT * FROM carapace_channel_registrations WHERE channel_type=? AND platform_id=? "
        "AND approver_user_id=? AND stage='awaiting_name' ORDER BY created_at LIMIT 1",
        (event.channel_type, event.platform_id, clicker),
    ).fetchone()
    if row is None or clicker is None:
        return False
    mg_id = row["messaging_group_id"]
    now = ctx.now()
    ctx.db.execute("DELETE FROM carapace_channel_registrations WHERE messaging_group_id=?",
                   (mg_id,))  # fmt: skip
    doc = json.loads(event.message.content) if event.message.content.startswith("{") else {}
    text = (doc.get("text") if isinstance(doc, dict) else None) or ""
    name = str(text).strip()[:100]
    pending = dba.get_channel_approval(ctx.db, mg_id)
    if not name or pending is None:
        return True
    with transaction(ctx.db):
        group = create_named_group(ctx, name, now)
        outcome = connect(ctx, pending, group, clicker, now)
        if outcome.status == "approved":
            cards.send_text(ctx.db, event.channel_type, event.platform_id, event.thread_id,
                            f'✅ Agent "{name}" created and connected.', now=now)  # fmt: skip
    return True


def expire_channel(ctx: Ctx, card: cards.Card, now: datetime) -> None:
    dba.delete_channel_approval(ctx.db, card.card_id)
    ctx.db.execute("DELETE FROM carapace_channel_registrations WHERE messaging_group_id=?",
                   (card.card_id,))  # fmt: skip


def cancel_channel(ctx: Ctx, card: cards.Card) -> None:
    expire_channel(ctx, card, ctx.now())


cards.UNDELIVERABLE["channel"] = cancel_channel
