"""``ask_user_question`` round trips through ``pending_questions`` (spec/host.md §6.9).

Delivery calls ``record_question`` before it posts an ``ask_question`` card written by a
runner: the question row (idempotent under retries) and its card row (reply code, expiry)
are recorded, and the content to post gains a text rendering for channels without buttons.
A question whose id is another card's (say the agent's own pending approval, whose options
a click would then be read against) is refused: a permanent delivery failure, told to the
agent.
An answer (a click, a text reply, or ``carapace admin approvals approve``) from an
authorised person becomes the ``system`` row ``{type:'question_response', questionId,
selectedOption, userId}`` in the session's ``inbound.db``, and the question is closed.

Deviations from NanoClaw: the answer row is written with ``trigger=0`` — the waiting tool
reads it whatever its trigger, and an answer arriving after the tool gave up never makes
the sweep spawn a runner for it (§11.1 item 3); only a member/admin/owner of the agent
group, or the person in the DM where it was asked, may answer (§11.2 item 22); questions
expire after ``settings.approval_ttl_s`` like every card.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta
from typing import Any

from carapace.db import approvals as dba
from carapace.db.connection import transaction
from carapace.db.messaging import get_messaging_group_by_platform
from carapace.db.sessions import get_session
from carapace.errors import DeliveryError
from carapace.jsonutil import dumps
from carapace.permissions import access, cards
from carapace.permissions.cards import Ctx, Outcome
from carapace.timefmt import epoch_ms, iso

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600.0  # the host sets settings.approval_ttl_s at install


def record_question(
    db: sqlite3.Connection,
    session_id: str,
    message_out_id: str,
    content: dict[str, Any],
    *,
    channel_type: str | None,
    platform_id: str | None,
    thread_id: str | None,
    now: datetime,
    ttl_s: float | None = None,
) -> dict[str, Any]:
    """Record the question and its card; returns the content to post (with ``text``)."""
    qid = content.get("questionId")
    title = content.get("title")
    options = content.get("options")
    if not isinstance(qid, str) or not qid or not isinstance(title, str) or not title:
        logger.error("ask_question %s lacks questionId or title; not recorded", message_out_id)
        return content
    if not isinstance(options, list):
        logger.error("ask_question %s has no options list; not recorded", qid)
        return content
    session = get_session(db, session_id)
    existing = cards.get_card(db, qid)
    if existing is not None and (existing.kind != "question" or existing.session_id != session_id):
        # an agent's question wearing another card's id (e.g. its own pending approval):
        # a click on its buttons would be read against that card's options
        raise DeliveryError(f"ask_question: the id {qid!r} belongs to another card", permanent=True)
    try:
        opts = dba.normalize_options(options)
    except Exception:
        logger.error("ask_question %s has malformed options; not recorded", qid)
        return content
    with transaction(db):
        dba.create_question(
            db, qid, session_id, message_out_id, title, opts, platform_id=platform_id,
            channel_type=channel_type, thread_id=thread_id, now=now,
        )  # fmt: skip
        card = cards.get_card(db, qid)
        if card is None or card.status != "pending":
            target = (
                (channel_type, platform_id, thread_id) if channel_type and platform_id else None
            )
            card = cards.create_card(
                db, qid, "question", title=title, question=str(content.get("question") or ""),
                options=opts, now=now, expires_at=now + timedelta(seconds=ttl_s or DEFAULT_TTL_S),
                agent_group_id=session.agent_group_id if session else None,
                session_id=session_id, target=target, deliver=False,
            )  # fmt: skip
    out = dict(content)
    out["options"] = opts
    out["text"] = cards.render_text(card)
    out["replyCode"] = card.code
    return out


def question_delivered(
    db: sqlite3.Connection, question_id: str, platform_message_id: str | None, now: datetime
) -> None:
    """Delivery posted the card: remember its platform message id (for the edit)."""
    cards.update_card(db, question_id, platform_message_id=platform_message_id,
                      delivered_at=iso(now))  # fmt: skip


def authorised(
    ctx: Ctx, q: dba.PendingQuestion, clicker: str, where: tuple[str, str] | None
) -> bool:
    session = get_session(ctx.db, q.session_id)
    if session is not None and access.can_access(ctx.db, clicker, session.agent_group_id).allowed:
        return True
    if where is not None and q.channel_type == where[0] and q.platform_id == where[1]:
        mg = get_messaging_group_by_platform(ctx.db, where[0], where[1])
        return mg is not None and not mg.is_group  # the person asked, in their DM
    return False


def answer_question(
    ctx: Ctx,
    q: dba.PendingQuestion,
    value: str,
    clicker: str,
    where: tuple[str, str] | None = None,
) -> Outcome:
    qid = q.question_id
    if not authorised(ctx, q, clicker, where):
        return Outcome(qid, "question", "unauthorised", cards.NOT_AUTHORISED)
    now = ctx.now()
    card = cards.get_card(ctx.db, qid)
    option = card.option(value) if card is not None else None
    label = option["selectedLabel"] if option else value
    session = get_session(ctx.db, q.session_id)
    with transaction(ctx.db):
        if not dba.delete_question(ctx.db, qid):
            return Outcome(qid, "question", "gone", "This question was answered already.")
        cards.finish_card(ctx.db, qid, "answered", now=now, by=clicker, decision=value,
                          label=f"✅ {label}")  # fmt: skip
    if session is None:
        return Outcome(qid, "question", "gone", "The conversation that asked is gone.")
    ctx.sessions.write_message(
        session,
        {
            "id": f"qr-{qid}-{epoch_ms(now)}", "kind": "system", "timestamp": iso(now),
            "platform_id": q.platform_id, "channel_type": q.channel_type,
            "thread_id": q.thread_id, "trigger": 0,
            "content": dumps({"type": "question_response", "questionId": qid,
                              "selectedOption": value, "userId": clicker}),
        },
        now=now,
    )  # fmt: skip
    logger.info("question %s answered %r by %s", qid, value, clicker)
    return Outcome(qid, "question", "answered", f"Answered: {label}")


def expire_question(ctx: Ctx, card: cards.Card, now: datetime) -> None:
    dba.delete_question(ctx.db, card.card_id)
