"""Running the card effects ``carapace_card_effects`` queues (``carapace.permissions.cards``):
deliver a card to its approver's chat, edit it to show the decision, tell a clicker they
may not answer, replay a held message through the router. ``pump`` runs what is due; an
effect that fails is retried with backoff up to ``MAX_EFFECT_TRIES`` times."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from carapace.channels.base import ChannelUnavailable, InboundEvent, OutboundMessage
from carapace.db.connection import transaction
from carapace.jsonutil import loads_or
from carapace.permissions import access
from carapace.permissions.cards import (
    MAX_EFFECT_TRIES,
    UNAVAILABLE_RETRY_S,
    UNDELIVERABLE,
    Card,
    Ctx,
    Replay,
    card_content,
    finish_card,
    get_card,
    update_card,
)
from carapace.timefmt import iso

logger = logging.getLogger(__name__)


async def _resolve_target(ctx: Ctx, adapters: Mapping[str, Any], card: Card) -> bool:
    if card.channel_type and card.platform_id:
        return True
    cands = loads_or(card.candidates, [])
    approvers = [c for c in cands if isinstance(c, str)] if isinstance(cands, list) else []
    target = await access.pick_approval_delivery(
        ctx.db, adapters, approvers, card.origin_channel_type, now=ctx.now()
    )
    if target is None:
        return False
    mg = target.messaging_group
    with transaction(ctx.db):
        update_card(ctx.db, card.card_id, approver_user_id=target.user_id,
                    channel_type=mg.channel_type, platform_id=mg.platform_id, thread_id=None)  # fmt: skip
        table = {"sender": ("pending_sender_approvals", "id"),
                 "channel": ("pending_channel_approvals", "messaging_group_id")}.get(card.kind)  # fmt: skip
        if table is not None:
            ctx.db.execute(
                f"UPDATE {table[0]} SET approver_user_id=? WHERE {table[1]}=?",
                (target.user_id, card.card_id),
            )
        if card.kind == "approval":
            ctx.db.execute(
                "UPDATE pending_approvals SET channel_type=?, platform_id=? WHERE approval_id=?",
                (mg.channel_type, mg.platform_id, card.card_id),
            )
    return True


async def _run(ctx: Ctx, adapters: Mapping[str, Any], replay: Replay, kind: str,
               card_id: str | None, payload: dict[str, Any]) -> None:  # fmt: skip
    if kind == "replay":
        await replay(InboundEvent.from_json(payload["event"]))
        return
    if kind == "send_text":
        adapter = adapters.get(payload["channelType"])
        if adapter is None:
            raise LookupError(f"no adapter for {payload['channelType']}")
        await adapter.deliver(payload["platformId"], payload.get("threadId"),
                              OutboundMessage("chat", {"text": payload["text"]}))  # fmt: skip
        return
    card = get_card(ctx.db, card_id or "")
    if card is None:
        return
    if kind == "deliver_card":
        if card.status != "pending":
            return
        if not await _resolve_target(ctx, adapters, card):
            logger.warning("card %s: no approver reachable; cancelled", card.card_id)
            with transaction(ctx.db):
                finish_card(ctx.db, card.card_id, "cancelled", now=ctx.now())
                hook = UNDELIVERABLE.get(card.kind)
                if hook is not None:
                    hook(ctx, card)
            return
        card = get_card(ctx.db, card.card_id)
        assert card is not None and card.channel_type and card.platform_id
        adapter = adapters.get(card.channel_type)
        if adapter is None:
            raise LookupError(f"no adapter for {card.channel_type}")
        pmid = await adapter.deliver(card.platform_id, card.thread_id,
                                     OutboundMessage("chat-sdk", card_content(card)))  # fmt: skip
        update_card(ctx.db, card.card_id, platform_message_id=pmid, delivered_at=iso(ctx.now()))
        if card.kind == "approval" and pmid:
            ctx.db.execute("UPDATE pending_approvals SET platform_message_id=? "
                           "WHERE approval_id=?", (pmid, card.card_id))  # fmt: skip
        logger.info("card %s (%s) delivered to %s:%s", card.card_id, card.kind,
                    card.channel_type, card.platform_id)  # fmt: skip
        return
    if kind == "edit_card":
        if not card.channel_type or not card.platform_id or card.delivered_at is None:
            return  # never shown: nothing to edit
        adapter = adapters.get(card.channel_type)
        if adapter is None:
            raise LookupError(f"no adapter for {card.channel_type}")
        edit = getattr(adapter, "edit", None)
        if edit is not None and card.platform_message_id:
            await edit(card.platform_id, card.thread_id, card.platform_message_id,
                       payload["text"])  # fmt: skip
        else:
            await adapter.deliver(card.platform_id, card.thread_id,
                                  OutboundMessage("chat", {"text": payload["text"]}))  # fmt: skip
        return
    raise ValueError(f"unknown card effect {kind!r}")


async def pump(ctx: Ctx, adapters: Mapping[str, Any], replay: Replay) -> int:
    """Run the due card effects in order; returns how many finished. Safe to call often."""
    now = ctx.now()
    rows = ctx.db.execute(
        "SELECT * FROM carapace_card_effects WHERE done_at IS NULL AND next_at <= ? "
        "ORDER BY id LIMIT 100",
        (iso(now),),
    ).fetchall()
    done = 0
    for row in rows:
        payload = loads_or(row["payload"], {})
        try:
            await _run(ctx, adapters, replay, row["kind"], row["card_id"], payload)
        except ChannelUnavailable:
            later = now + timedelta(seconds=UNAVAILABLE_RETRY_S)
            ctx.db.execute("UPDATE carapace_card_effects SET next_at=? WHERE id=?",
                           (iso(later), row["id"]))  # fmt: skip
            continue
        except Exception as exc:  # one bad effect must not stop the others
            tries = int(row["attempts"]) + 1
            logger.warning("card effect %s (%s) failed (try %d): %s", row["id"], row["kind"],
                           tries, exc)  # fmt: skip
            if tries >= MAX_EFFECT_TRIES:
                ctx.db.execute("UPDATE carapace_card_effects SET attempts=?, done_at=?, error=? "
                               "WHERE id=?", (tries, iso(now), str(exc)[:500], row["id"]))  # fmt: skip
            else:
                later = now + timedelta(seconds=5 * 2 ** (tries - 1))
                ctx.db.execute("UPDATE carapace_card_effects SET attempts=?, next_at=?, error=? "
                               "WHERE id=?", (tries, iso(later), str(exc)[:500], row["id"]))  # fmt: skip
            continue
        ctx.db.execute("UPDATE carapace_card_effects SET done_at=? WHERE id=?",
                       (iso(ctx.now()), row["id"]))  # fmt: skip
        done += 1
    return done
