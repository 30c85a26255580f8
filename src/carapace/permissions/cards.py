"""Cards: the visible side of every pending decision, and a durable queue of its effects.

Every pending decision (generic approval ``appr-…``, unknown sender ``nsa-…``, unknown
channel = its messaging group id, agent question ``msg-…``) has one ``carapace_cards`` row:
where its card is shown, a short reply code for channels without buttons, its status
(``pending`` → ``approved``/``rejected``/``answered``/``expired``/``cancelled``) and its
expiry. NanoClaw's own ``pending_*`` rows stay as NanoClaw writes them.

Side effects that need the network (delivering a card, editing it, telling a clicker
"not authorised", replaying a held message through the router) are rows of
``carapace_card_effects``, written in the same transaction as the decision and run by
``card_effects.pump``; a host restart between a decision and its effects loses nothing.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from carapace.channels.base import InboundEvent
from carapace.config import Home, Settings
from carapace.db.approvals import normalize_options
from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.db.session import SessionPaths
from carapace.db.sessions import Session
from carapace.jsonutil import dumps, loads_or
from carapace.permissions.card_text import bound_card_text
from carapace.timefmt import iso, parse_ts

logger = logging.getLogger(__name__)

KINDS = ("approval", "sender", "channel", "question")
TERMINAL = ("approved", "rejected", "answered", "expired", "cancelled")
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LEN = 4
MAX_EFFECT_TRIES = 6
UNAVAILABLE_RETRY_S = 5.0


class SessionWriter(Protocol):
    """What the approval code writes into sessions (the host's ``SessionManager``)."""

    def paths(self, session: Session) -> SessionPaths: ...

    def notify_agent(
        self, session: Session, text: str, *, now: datetime, prefix: str = "sys"
    ) -> str | None: ...

    def write_message(
        self, session: Session, row: dict[str, Any], *, now: datetime, due: str | None = None
    ) -> None: ...


class Ctx(Protocol):
    """What the approval code needs from its caller (the host, or the admin's context)."""

    home: Home
    db: sqlite3.Connection
    settings: Settings

    @property
    def sessions(self) -> SessionWriter: ...

    def now(self) -> datetime: ...

    def restart_group(self, agent_group_id: str, message: str | None = None) -> int: ...

    def wake_session(self, session_id: str) -> None: ...


Replay = Callable[[InboundEvent], Awaitable[Any]]
UndeliverableHook = Callable[[Ctx, "Card"], None]
# kind → what to do when nobody can be reached for a card (set by the flow modules)
UNDELIVERABLE: dict[str, UndeliverableHook] = {}
# called after new effects are committed (the host's pump registers a thread-safe wake-up)
KICKERS: list[Callable[[], None]] = []


def kick() -> None:
    """Tell the effect pump to look now (safe from any thread)."""
    for k in list(KICKERS):
        try:
            k()
        except RuntimeError:  # the loop is closed
            pass


@dataclass(frozen=True)
class Card:
    card_id: str
    kind: str
    code: str
    agent_group_id: str | None
    session_id: str | None
    approver_user_id: str | None
    candidates: str
    origin_channel_type: str | None
    title: str
    question: str
    options_json: str
    channel_type: str | None
    platform_id: str | None
    thread_id: str | None
    platform_message_id: str | None
    status: str
    created_at: str
    expires_at: str | None
    delivered_at: str | None
    decided_at: str | None
    decided_by: str | None
    decision: str | None

    @property
    def options(self) -> list[dict[str, str]]:
        value = loads_or(self.options_json, [])
        return [o for o in value if isinstance(o, dict)] if isinstance(value, list) else []

    def option(self, value: str) -> dict[str, str] | None:
        return next((o for o in self.options if o.get("value") == value), None)


@dataclass(frozen=True)
class Outcome:
    """What a click, a text reply or an operator decision did."""

    id: str
    kind: str
    status: str  # approved | rejected | answered | pending | unauthorised | gone | invalid
    message: str

    @property
    def applied(self) -> bool:
        return self.status in ("approved", "rejected", "answered", "pending")

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "status": self.status, "message": self.message}


NOT_AUTHORISED = "You are not authorised to answer this."


def _code(db: sqlite3.Connection) -> str:
    for _ in range(200):
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LEN))
        if get_by_code(db, code) is None:
            return code
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LEN + 2))


def expiry(ctx: Ctx, now: datetime) -> datetime:
    return now + timedelta(seconds=float(ctx.settings.approval_ttl_s))


def create_card(
    db: sqlite3.Connection,
    card_id: str,
    kind: str,
    *,
    title: str,
    question: str,
    options: list[Any],
    now: datetime,
    expires_at: datetime | None,
    agent_group_id: str | None = None,
    session_id: str | None = None,
    candidates: list[str] | None = None,
    origin_channel_type: str | None = None,
    target: tuple[str, str, str | None] | None = None,
    platform_message_id: str | None = None,
    deliver: bool = True,
) -> Card:
    """A pending card (replacing a finished one with the same id) and its delivery effect.

    ``candidates`` are approvers in preference order; the pump delivers to the first one it
    can reach. ``target`` fixes the chat instead (questions, follow-up cards)."""
    ct, pid, tid = target if target is not None else (None, None, None)
    title = bound_card_text(title, chars=200, lines=1)
    question = bound_card_text(question)
    with transaction(db):
        db.execute("DELETE FROM carapace_cards WHERE card_id=? AND status<>'pending'", (card_id,))
        db.execute(
            "INSERT INTO carapace_cards (card_id, kind, code, agent_group_id, session_id, "
            "approver_user_id, candidates, origin_channel_type, title, question, options_json, "
            "channel_type, platform_id, thread_id, platform_message_id, status, created_at, "
            "expires_at, delivered_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (card_id, kind, _code(db), agent_group_id, session_id,
             candidates[0] if candidates else None, dumps(candidates or []), origin_channel_type, title,
             question, dumps(normalize_options(options)), ct, pid, tid, platform_message_id,
             iso(now), iso(expires_at) if expires_at else None,
             iso(now) if platform_message_id else None),
        )  # fmt: skip
        if deliver:
            enqueue(db, "deliver_card", {}, card_id=card_id, now=now)
    card = get_card(db, card_id)
    assert card is not None
    return card


def get_card(db: sqlite3.Connection, card_id: str) -> Card | None:
    row = db.execute("SELECT * FROM carapace_cards WHERE card_id=?", (card_id,)).fetchone()
    return from_row(Card, row)


def get_by_code(db: sqlite3.Connection, code: str) -> Card | None:
    row = db.execute(
        "SELECT * FROM carapace_cards WHERE code=? ORDER BY status<>'pending', created_at DESC "
        "LIMIT 1",
        (code.upper(),),
    ).fetchone()
    return from_row(Card, row)


def pending_cards(db: sqlite3.Connection) -> list[Card]:
    rows = db.execute(
        "SELECT * FROM carapace_cards WHERE status='pending' ORDER BY created_at, card_id"
    ).fetchall()
    return from_rows(Card, rows)


def expired_cards(db: sqlite3.Connection, now: datetime) -> list[Card]:
    rows = db.execute(
        "SELECT * FROM carapace_cards WHERE status='pending' AND expires_at IS NOT NULL "
        "AND expires_at <= ? ORDER BY expires_at",
        (iso(now),),
    ).fetchall()
    return from_rows(Card, rows)


def expiry_due(db: sqlite3.Connection, now: datetime) -> bool:
    """Whether some pending card has expired (cheap; the pump asks every second)."""
    row = db.execute(
        "SELECT 1 FROM carapace_cards WHERE status='pending' AND expires_at IS NOT NULL "
        "AND expires_at <= ? LIMIT 1",
        (iso(now),),
    ).fetchone()
    return row is not None


def update_card(db: sqlite3.Connection, card_id: str, **changes: Any) -> None:
    for key, value in changes.items():
        db.execute(f"UPDATE carapace_cards SET {key}=? WHERE card_id=?", (value, card_id))


def finish_card(
    db: sqlite3.Connection,
    card_id: str,
    status: str,
    *,
    now: datetime,
    by: str | None = None,
    decision: str | None = None,
    label: str | None = None,
) -> bool:
    """Move a pending card to ``status`` and edit it to show the outcome; False when it was
    not pending any more (someone else decided first)."""
    assert status in TERMINAL
    cur = db.execute(
        "UPDATE carapace_cards SET status=?, decided_at=?, decided_by=?, decision=? "
        "WHERE card_id=? AND status='pending'",
        (status, iso(now), by, decision, card_id),
    )
    if cur.rowcount == 0:
        return False
    card = get_card(db, card_id)
    if card is not None and label:
        enqueue(db, "edit_card", {"text": f"{card.title or '❓ Question'}\n\n{label}"},
                card_id=card_id, now=now)  # fmt: skip
    return True


def enqueue(
    db: sqlite3.Connection,
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    card_id: str | None = None,
) -> None:
    db.execute(
        "INSERT INTO carapace_card_effects (card_id, kind, payload, created_at, next_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (card_id, kind, dumps(payload), iso(now), iso(now)),
    )


HELD_UNTIL = "9999-12-31T23:59:59.999Z"  # a ``held`` effect is never due by itself


def hold(db: sqlite3.Connection, card_id: str, event: dict[str, Any], *, now: datetime) -> bool:
    """Keep one more message (an ``InboundEvent`` as JSON) with a pending decision, to be
    replayed after the first one when it is approved (``release_held``) or dropped with it
    (``drop_held``). False when that message is kept already (a redelivered event)."""
    msg = event.get("message")
    mid = msg.get("id") if isinstance(msg, dict) else None
    for (raw,) in db.execute(
        "SELECT payload FROM carapace_card_effects WHERE card_id=? AND kind='held' "
        "AND done_at IS NULL",
        (card_id,),
    ).fetchall():
        held = loads_or(raw, {})
        kept = held.get("event", {}).get("message", {}) if isinstance(held, dict) else {}
        if mid and isinstance(kept, dict) and kept.get("id") == mid:
            return False
    db.execute(
        "INSERT INTO carapace_card_effects (card_id, kind, payload, created_at, next_at) "
        "VALUES (?, 'held', ?, ?, ?)",
        (card_id, dumps({"event": event}), iso(now), HELD_UNTIL),
    )
    return True


def release_held(db: sqlite3.Connection, card_id: str, *, now: datetime) -> int:
    """Queue a replay of every message kept with ``card_id``, oldest first."""
    rows = db.execute(
        "SELECT id, payload FROM carapace_card_effects WHERE card_id=? AND kind='held' "
        "AND done_at IS NULL ORDER BY id",
        (card_id,),
    ).fetchall()
    for row in rows:
        enqueue(db, "replay", loads_or(row["payload"], {}), card_id=card_id, now=now)
        db.execute("UPDATE carapace_card_effects SET done_at=? WHERE id=?", (iso(now), row["id"]))
    return len(rows)


def drop_held(db: sqlite3.Connection, card_id: str, *, now: datetime, why: str) -> int:
    cur = db.execute(
        "UPDATE carapace_card_effects SET done_at=?, error=? WHERE card_id=? AND kind='held' "
        "AND done_at IS NULL",
        (iso(now), f"dropped: {why}", card_id),
    )
    return cur.rowcount


def send_text(
    db: sqlite3.Connection,
    channel_type: str,
    platform_id: str,
    thread_id: str | None,
    text: str,
    *,
    now: datetime,
) -> None:
    """Queue a plain text message to a chat (a reply to a clicker, a prompt)."""
    enqueue(db, "send_text",
            {"channelType": channel_type, "platformId": platform_id, "threadId": thread_id,
             "text": text}, now=now)  # fmt: skip


def render_text(card: Card) -> str:
    """The card as text, for channels without buttons (and as every card's fallback)."""
    lines = [card.title] if card.title else []
    if card.question:
        lines.append(card.question)
    opts = card.options
    if opts:
        lines.append("Options: " + ", ".join(o["label"] for o in opts))
        words = [f"`{card.code} {reply_word(o)}`" for o in opts]
        lines.append("Reply " + (" or ".join(words) if len(words) <= 2 else ", ".join(words)))
    return "\n".join(lines)


def reply_word(option: dict[str, str]) -> str:
    label = option.get("label", "")
    return label.split()[0].lower() if label.split() else option.get("value", "")


def card_content(card: Card) -> dict[str, Any]:
    """NanoClaw's ``ask_question`` payload plus ``text`` (fallback) and ``replyCode``."""
    return {
        "type": "ask_question", "questionId": card.card_id, "title": card.title,
        "question": card.question, "options": card.options, "text": render_text(card),
        "replyCode": card.code,
    }  # fmt: skip


def match_option(card: Card, answer: str) -> dict[str, str] | None:
    """The option an answer names: its value, its label, its first word, or its 1-based
    number (all case-insensitive)."""
    a = answer.strip().strip("`").lower()
    opts = card.options
    if a.isdigit() and 1 <= int(a) <= len(opts):
        return opts[int(a) - 1]
    for o in opts:
        if a in (o.get("value", "").lower(), o.get("label", "").lower(), reply_word(o)):
            return o
    return None


def card_expires(card: Card) -> datetime | None:
    return parse_ts(card.expires_at) if card.expires_at else None
