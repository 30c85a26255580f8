"""The approvals engine: privileged agent actions, and one entry point for every answer.

Spec/host.md §6.7–6.8, §5.7, §4.6, §4.8. An agent's ``create_agent``,
``install_packages``, ``add_mcp_server`` or an admin command it may not run itself
(``cli_command``) becomes a ``pending_approvals`` row and a card for the first reachable
approver (scoped admin → global admin → owner). The action is applied only on approval,
and the requesting agent is told the result as a system note in its session.

Every answer — a button click (``handle_action``), a text reply with the card's code on a
channel without buttons (``match_text_reply``, called by the router before routing), or the
operator's ``carapace admin approvals approve|reject`` (``decide``) — goes through
``respond``, which finds the pending decision by id (``appr-…``, ``nsa-…``, a messaging
group id, a question id) or reply code, checks that the clicker may decide, and applies it.
An unauthorised answer changes nothing and the clicker is told so. ``expire_due`` (called by
the sweep) expires every kind of card after ``settings.approval_ttl_s``.

Deviations from NanoClaw: clicks on ``pending_approvals`` are authorised (§11.2 item 22);
``create_agent`` needs an approval; approvals expire; the decision and its effects are in
the DB before anything is sent (``carapace.permissions.cards``).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carapace.channels.base import InboundEvent
from carapace.db import approvals as dba
from carapace.db.connection import transaction
from carapace.db.messaging import get_messaging_group
from carapace.db.session import init_session_folder
from carapace.db.sessions import Session, get_session
from carapace.errors import NotFoundError
from carapace.jsonutil import loads_or
from carapace.permissions import (
    access,
    cards,
    channel_approval,
    questions,
    sender_approval,
)
from carapace.permissions.cards import Ctx, Outcome
from carapace.timefmt import iso, parse_ts

logger = logging.getLogger(__name__)

OPTIONS: list[Any] = [
    {"label": "Approve", "selectedLabel": "✅ Approved", "value": "approve"},
    {"label": "Reject", "selectedLabel": "❌ Rejected", "value": "reject"},
]
EXPIRED_LABEL = "⌛ Expired (no response)"
REPLY_RE = re.compile(r"\s*`?([A-Za-z0-9]{4,6})\s+([^`]+?)`?\s*")


@dataclass(frozen=True)
class Applied:
    """What an approval handler did: the note for the agent, and a group to restart."""

    note: str
    restart_group: str | None = None


Handler = Callable[[Ctx, Session, dict[str, Any], str], Applied]
HANDLERS: dict[str, Handler] = {}


def register_handler(action: str, handler: Handler) -> None:
    HANDLERS[action] = handler


def notify_agent(ctx: Ctx, session: Session, text: str) -> None:
    """A system note to the agent (spec §2.10), then a wake. A session whose folder is gone
    gets a fresh one; a note that cannot be written is logged (the decision stands)."""
    manager = ctx.sessions
    try:
        paths = manager.paths(session)
        if not paths.inbound.exists():
            init_session_folder(paths)
        manager.notify_agent(session, text, now=ctx.now())
    except (OSError, sqlite3.Error) as exc:
        logger.warning("note to session %s not written: %s", session.id, exc)
        return
    ctx.wake_session(session.id)


# --- requests ---------------------------------------------------------------------------------


def request_approval(
    ctx: Ctx, session_id: str, action: str, payload: dict[str, Any], title: str, question: str
) -> str | None:
    """Hold ``action`` for an approver's decision; returns the approval id (None: refused
    at once, the agent was told why)."""
    session = get_session(ctx.db, session_id)
    if session is None:
        raise NotFoundError(f"no session {session_id!r}")
    approvers = access.pick_approver(ctx.db, session.agent_group_id)
    if not approvers:
        notify_agent(ctx, session, f"{action} failed: no owner or admin configured to approve.")
        return None
    mg = get_messaging_group(ctx.db, session.messaging_group_id or "")
    now = ctx.now()
    expires = cards.expiry(ctx, now)
    with transaction(ctx.db):
        row = dba.create_approval(
            ctx.db, action, payload, session_id=session.id,
            agent_group_id=session.agent_group_id, title=title, options=OPTIONS,
            expires_at=expires, now=now,
        )  # fmt: skip
        cards.create_card(
            ctx.db, row.approval_id, "approval", title=title, question=question, options=OPTIONS,
            now=now, expires_at=expires, agent_group_id=session.agent_group_id,
            session_id=session.id, candidates=approvers,
            origin_channel_type=mg.channel_type if mg else None,
        )  # fmt: skip
    logger.info("approval %s (%s) requested by session %s", row.approval_id, action, session.id)
    cards.kick()
    return row.approval_id


def _undeliverable(ctx: Ctx, card: cards.Card) -> None:
    row = dba.get_approval(ctx.db, card.card_id)
    ctx.db.execute("DELETE FROM pending_approvals WHERE approval_id=?", (card.card_id,))
    session = get_session(ctx.db, card.session_id or "")
    if row is not None and session is not None:
        notify_agent(ctx, session,
                     f"{row.action} failed: no DM channel found for any eligible approver.")  # fmt: skip


cards.UNDELIVERABLE["approval"] = _undeliverable


def decide_generic(ctx: Ctx, row: dba.PendingApproval, value: str, clicker: str) -> Outcome:
    aid = row.approval_id
    card = cards.get_card(ctx.db, aid)
    approver = card.approver_user_id if card else None
    if clicker != approver and not access.has_admin_privilege(ctx.db, clicker, row.agent_group_id):
        return Outcome(aid, "approval", "unauthorised", cards.NOT_AUTHORISED)
    now = ctx.now()
    session = get_session(ctx.db, row.session_id or "")
    approve = value == "approve"
    applied: Applied | None = None
    with transaction(ctx.db):
        if ctx.db.execute("DELETE FROM pending_approvals WHERE approval_id=? AND status='pending'",
                          (aid,)).rowcount == 0:  # fmt: skip
            return Outcome(aid, "approval", "gone", "This request was decided already.")
        cards.finish_card(ctx.db, aid, "approved" if approve else "rejected", now=now,
                          by=clicker, decision=value,
                          label="✅ Approved" if approve else "❌ Rejected")  # fmt: skip
        if session is None:
            return Outcome(aid, "approval", "gone", "The requesting session is gone.")
        payload = loads_or(row.payload, {})
        handler = HANDLERS.get(row.action)
        if not approve:
            applied = Applied(f"Your {row.action} request was rejected by admin.")
        elif handler is None:
            applied = Applied(f"Your {row.action} was approved, but no handler is installed "
                              "to apply it.")  # fmt: skip
        else:
            try:
                with transaction(ctx.db):
                    applied = handler(ctx, session, payload if isinstance(payload, dict) else {},
                                      clicker)  # fmt: skip
            except Exception as exc:  # the agent is told; the decision stands
                logger.exception("approval %s (%s) failed to apply", aid, row.action)
                applied = Applied(f"Your {row.action} was approved, but applying it failed: "
                                  f"{exc}.")  # fmt: skip
    if applied.restart_group:
        ctx.restart_group(applied.restart_group)
    notify_agent(ctx, session, applied.note)
    status = "approved" if approve else "rejected"
    logger.info("approval %s (%s) %s by %s", aid, row.action, status, clicker)
    return Outcome(aid, "approval", status, applied.note)


# --- answers ----------------------------------------------------------------------------------


def respond(
    ctx: Ctx, card_id: str, value: str, clicker: str, where: tuple[str, str] | None = None
) -> Outcome:
    """Apply one answer to the pending decision ``card_id`` (any kind)."""
    try:
        outcome = _respond(ctx, card_id, value, clicker, where)
    finally:
        cards.kick()
    return outcome


def _respond(
    ctx: Ctx, card_id: str, value: str, clicker: str, where: tuple[str, str] | None
) -> Outcome:
    card = cards.get_card(ctx.db, card_id)
    expires = card.expires_at if card is not None and card.status == "pending" else None
    if card is not None and expires is not None and expires <= iso(ctx.now()):
        expire_due(ctx)  # expiry holds at decision time, not only at the expiry pass
        return Outcome(card_id, card.kind, "gone", "This request has expired.")
    row = dba.get_approval(ctx.db, card_id)
    if row is not None and row.status == "pending":
        return decide_generic(ctx, row, value, clicker)
    sender = dba.get_sender_approval(ctx.db, card_id)
    if sender is not None:
        return sender_approval.decide_sender(ctx, sender, value, clicker)
    channel = dba.get_channel_approval(ctx.db, card_id)
    if channel is not None:
        return channel_approval.decide_channel(ctx, channel, value, clicker)
    q = dba.get_question(ctx.db, card_id)
    if q is not None:
        return questions.answer_question(ctx, q, value, clicker, where)
    card = cards.get_card(ctx.db, card_id)  # decided just now by another path
    if card is not None:
        return Outcome(card_id, card.kind, "gone", f"This request is {card.status} already.")
    raise NotFoundError(f"no pending approval or question {card_id!r}")


def decide(
    ctx: Ctx, approval_id: str, approve: bool, clicker_user_id: str, value: str | None = None
) -> dict[str, str]:
    """The operator's (or any caller's) decision by id or reply code, as a click of
    ``clicker_user_id``. For a registration card, approve connects the chat to the reference
    (earliest) agent group; for a question, approve picks the first option, reject the last
    (or pass ``value``)."""
    card_id = approval_id
    if cards.get_card(ctx.db, card_id) is None and not _exists(ctx, card_id):
        by_code = cards.get_by_code(ctx.db, approval_id)
        if by_code is None:
            raise NotFoundError(f"no pending approval or question {approval_id!r}")
        card_id = by_code.card_id
    if value is None:
        channel = dba.get_channel_approval(ctx.db, card_id)
        q_card = cards.get_card(ctx.db, card_id)
        if channel is not None:
            value = f"connect:{channel.agent_group_id}" if approve else "reject"
        elif dba.get_question(ctx.db, card_id) is not None and q_card and q_card.options:
            value = q_card.options[0 if approve else -1]["value"]
        else:
            value = "approve" if approve else "reject"
    return respond(ctx, card_id, value, clicker_user_id).to_json()


def _exists(ctx: Ctx, card_id: str) -> bool:
    return any(
        (dba.get_approval(ctx.db, card_id), dba.get_sender_approval(ctx.db, card_id),
         dba.get_channel_approval(ctx.db, card_id), dba.get_question(ctx.db, card_id))
    )  # fmt: skip


def handle_action(
    ctx: Ctx,
    question_id: str,
    value: str,
    raw_user_id: str,
    channel_type: str,
    platform_id: str | None = None,
    thread_id: str | None = None,
) -> Outcome:
    """A button click (``ncq:<questionId>:<index>``): the index names an option. A refused
    click is answered in the chat it came from; the card itself is left as it was."""
    card = cards.get_card(ctx.db, question_id)
    if card is not None and value.isdigit() and int(value) < len(card.options):
        value = card.options[int(value)]["value"]
    clicker = access.clicker_id(raw_user_id, channel_type)
    where = (channel_type, platform_id) if platform_id else None
    try:
        outcome = respond(ctx, question_id, value, clicker, where)
    except NotFoundError as exc:
        outcome = Outcome(question_id, "unknown", "gone", str(exc))
    if not outcome.applied and platform_id:
        cards.send_text(ctx.db, channel_type, platform_id, thread_id, outcome.message,
                        now=ctx.now())  # fmt: skip
    return outcome


def match_text_reply(
    ctx: Ctx, event: InboundEvent, *, naming: bool = True,
    card_by_code: Callable[[str], cards.Card | None] | None = None,
) -> bool:  # fmt: skip
    """The router's interceptor: True when the message answered a card (or named a new
    agent) and must not be routed. Only a reply in the chat where the card was shown.
    ``naming`` False: no registration waits for a name (the name lookup is skipped).
    ``card_by_code``: the card lookup (the host's keeps cards while the DB is unchanged:
    most messages start with a word the reply pattern takes for a code)."""
    doc = loads_or(event.message.content, None)  # once: this runs for every message
    clicker: str | None = None
    if naming:
        clicker, _ = access.doc_sender(event.channel_type, doc)
        if channel_approval.consume_name_reply(ctx, event, clicker):
            cards.kick()
            return True
    text = doc.get("text") if isinstance(doc, dict) else event.message.content
    m = REPLY_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return False
    card = (card_by_code or functools.partial(cards.get_by_code, ctx.db))(m.group(1))
    if card is None or (card.channel_type, card.platform_id) != (
        event.channel_type, event.platform_id
    ):  # fmt: skip
        return False
    if not naming:
        clicker, _ = access.doc_sender(event.channel_type, doc)
    now = ctx.now()

    def tell(msg: str) -> None:
        cards.send_text(ctx.db, event.channel_type, event.platform_id, event.thread_id, msg,
                        now=now)  # fmt: skip
        cards.kick()

    if card.status != "pending":
        tell(f"{card.code}: this request is {card.status} already.")
        return True
    option = cards.match_option(card, m.group(2))
    if option is None:
        tell(f"{card.code}: unknown answer. {cards.render_text(card).splitlines()[-1]}")
        return True
    if clicker is None:
        tell(cards.NOT_AUTHORISED)
        return True
    try:
        outcome = respond(ctx, card.card_id, option["value"], clicker,
                          (event.channel_type, event.platform_id))  # fmt: skip
    except NotFoundError as exc:
        outcome = Outcome(card.card_id, card.kind, "gone", str(exc))
    if not outcome.applied:
        tell(f"{card.code}: {outcome.message}")
    return True


# --- expiry and listing -----------------------------------------------------------------------

_EXPIRE: dict[str, Callable[[Ctx, cards.Card, datetime], None]] = {
    "sender": sender_approval.expire_sender,
    "channel": channel_approval.expire_channel,
    "question": questions.expire_question,
}


def adopt_orphans(ctx: Ctx) -> int:
    """Give a card (with expiry, without delivery) to pending rows made without one (a
    NanoClaw ``v2.db``, or rows from before this migration)."""
    n = 0
    for item in _orphans(ctx.db):
        created = parse_ts(item["created_at"])
        expires = cards.expiry(ctx, created)
        if item["kind"] == "approval":
            _adopt_approval(ctx, item["id"], expires)
        else:
            cards.create_card(
                ctx.db, item["id"], item["kind"], title=item["title"], question="",
                options=loads_or(item["options_json"], []), now=created, expires_at=expires,
                agent_group_id=item["agent_group_id"],
                candidates=[item["approver"]] if item["approver"] else [], deliver=False,
            )  # fmt: skip
        n += 1
    return n


def _adopt_approval(ctx: Ctx, approval_id: str, expires: datetime) -> None:
    """A ``pending_approvals`` row written without a card (the admin dispatcher's
    ``cli_command``, or a NanoClaw DB): give it one and deliver it."""
    row = dba.get_approval(ctx.db, approval_id)
    if row is None:
        return
    session = get_session(ctx.db, row.session_id or "")
    ag = row.agent_group_id or (session.agent_group_id if session else None)
    mg = get_messaging_group(ctx.db, session.messaging_group_id or "") if session else None
    payload = loads_or(row.payload, {})
    question = payload.get("question") if isinstance(payload, dict) else None
    opts = loads_or(row.options_json, []) or OPTIONS
    if row.expires_at:
        expires = parse_ts(row.expires_at)
    cards.create_card(
        ctx.db, row.approval_id, "approval", title=row.title or row.action,
        question=str(question or ""), options=opts, now=parse_ts(row.created_at),
        expires_at=expires, agent_group_id=ag, session_id=row.session_id,
        candidates=access.pick_approver(ctx.db, ag),
        origin_channel_type=mg.channel_type if mg else None,
    )  # fmt: skip


def _orphans(db: Any) -> list[dict[str, Any]]:
    sqls = (
        "SELECT approval_id AS id, 'approval' AS kind, title, agent_group_id, created_at, "
        "options_json, NULL AS approver FROM pending_approvals WHERE status='pending'",
        "SELECT id, 'sender' AS kind, title, agent_group_id, created_at, options_json, "
        "approver_user_id AS approver FROM pending_sender_approvals",
        "SELECT messaging_group_id AS id, 'channel' AS kind, title, agent_group_id, created_at, "
        "options_json, approver_user_id AS approver FROM pending_channel_approvals",
        "SELECT q.question_id AS id, 'question' AS kind, q.title, s.agent_group_id, q.created_at, "
        "q.options_json, NULL AS approver FROM pending_questions q "
        "LEFT JOIN sessions s ON s.id = q.session_id",
    )
    out: list[dict[str, Any]] = []
    for sql in sqls:
        for r in db.execute(sql).fetchall():
            card = db.execute("SELECT status FROM carapace_cards WHERE card_id=?", (r["id"],))
            found = card.fetchone()
            if found is None or found[0] != "pending":
                out.append(dict(r))
    return out


def expire_due(ctx: Ctx) -> int:
    """Expire every pending card past its time (the sweep calls this); returns how many."""
    adopt_orphans(ctx)
    now = ctx.now()
    n = 0
    for card in cards.expired_cards(ctx.db, now):
        note: tuple[Session, str] | None = None
        with transaction(ctx.db):
            if not cards.finish_card(ctx.db, card.card_id, "expired", now=now,
                                     label=EXPIRED_LABEL):  # fmt: skip
                continue
            if card.kind == "approval":
                row = dba.get_approval(ctx.db, card.card_id)
                ctx.db.execute("DELETE FROM pending_approvals WHERE approval_id=?",
                               (card.card_id,))  # fmt: skip
                session = get_session(ctx.db, card.session_id or "")
                if row is not None and session is not None:
                    note = (session, f"Your {row.action} request expired without a decision.")
            else:
                _EXPIRE[card.kind](ctx, card, now)
        if note is not None:
            notify_agent(ctx, *note)
        logger.info("%s card %s expired", card.kind, card.card_id)
        n += 1
    return n


def list_pending(db: Any) -> list[dict[str, Any]]:
    """Every pending decision: ``{id, kind, title, agent_group_id, session_id, created_at,
    expires_at, code, question}``, oldest first."""
    out: list[dict[str, Any]] = []
    for c in cards.pending_cards(db):
        if c.kind == "approval" and dba.get_approval(db, c.card_id) is None:
            continue
        out.append({"id": c.card_id, "kind": c.kind, "title": c.title,
                    "agent_group_id": c.agent_group_id, "session_id": c.session_id,
                    "created_at": c.created_at, "expires_at": c.expires_at, "code": c.code,
                    "question": c.question})  # fmt: skip
    for o in _orphans(db):
        if not any(x["id"] == o["id"] for x in out):
            out.append({"id": o["id"], "kind": o["kind"], "title": o["title"],
                        "agent_group_id": o["agent_group_id"], "session_id": None,
                        "created_at": o["created_at"], "expires_at": None, "code": None,
                        "question": ""})  # fmt: skip
    return sorted(out, key=lambda x: (x["created_at"], x["id"]))


def is_pending(db: Any, approval_id: str) -> bool:
    return any(x["id"] == approval_id for x in list_pending(db))
