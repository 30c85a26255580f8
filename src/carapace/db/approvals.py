"""Pending decisions: ``pending_questions``, ``pending_approvals``,
``pending_sender_approvals``, ``pending_channel_approvals`` (spec/host.md §6)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.errors import NotFoundError, ValidationError
from carapace.jsonutil import dumps
from carapace.timefmt import iso, new_id

APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired")


def normalize_options(options: list[Any]) -> list[dict[str, str]]:
    """``{label, selectedLabel, value}`` for each option (a bare string is its own label)."""
    out = []
    for opt in options:
        if isinstance(opt, str):
            out.append({"label": opt, "selectedLabel": opt, "value": opt})
        elif isinstance(opt, dict) and isinstance(opt.get("label"), str):
            label = opt["label"]
            out.append(
                {
                    "label": label,
                    "selectedLabel": str(opt.get("selectedLabel") or label),
                    "value": str(opt.get("value") or label),
                }
            )
        else:
            raise ValidationError(f"invalid option {opt!r}: a string or an object with a label")
    return out


@dataclass(frozen=True)
class PendingQuestion:
    question_id: str
    session_id: str
    message_out_id: str
    platform_id: str | None
    channel_type: str | None
    thread_id: str | None
    title: str
    options_json: str
    created_at: str


def create_question(
    db: sqlite3.Connection,
    question_id: str,
    session_id: str,
    message_out_id: str,
    title: str,
    options: list[Any],
    *,
    platform_id: str | None = None,
    channel_type: str | None = None,
    thread_id: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Record a question card (idempotent on ``question_id``); True when newly created."""
    cur = db.execute(
        "INSERT OR IGNORE INTO pending_questions (question_id, session_id, message_out_id, "
        "platform_id, channel_type, thread_id, title, options_json, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (question_id, session_id, message_out_id, platform_id, channel_type, thread_id, title,
         dumps(normalize_options(options)), iso(now)),
    )  # fmt: skip
    return cur.rowcount > 0


def get_question(db: sqlite3.Connection, question_id: str) -> PendingQuestion | None:
    row = db.execute("SELECT * FROM pending_questions WHERE question_id=?", (question_id,))
    return from_row(PendingQuestion, row.fetchone())


def list_questions(db: sqlite3.Connection) -> list[PendingQuestion]:
    rows = db.execute("SELECT * FROM pending_questions ORDER BY created_at").fetchall()
    return from_rows(PendingQuestion, rows)


def delete_question(db: sqlite3.Connection, question_id: str) -> bool:
    cur = db.execute("DELETE FROM pending_questions WHERE question_id=?", (question_id,))
    return cur.rowcount > 0


@dataclass(frozen=True)
class PendingApproval:
    approval_id: str
    session_id: str | None
    request_id: str
    action: str
    payload: str
    created_at: str
    agent_group_id: str | None
    channel_type: str | None
    platform_id: str | None
    platform_message_id: str | None
    expires_at: str | None
    status: str
    title: str
    options_json: str


def create_approval(
    db: sqlite3.Connection,
    action: str,
    payload: dict[str, Any],
    *,
    session_id: str | None = None,
    agent_group_id: str | None = None,
    title: str = "",
    options: list[Any] | None = None,
    expires_at: datetime | None = None,
    channel_type: str | None = None,
    platform_id: str | None = None,
    approval_id: str | None = None,
    now: datetime | None = None,
) -> PendingApproval:
    aid = approval_id or new_id("appr", now)
    opts = normalize_options(options if options is not None else [])
    with transaction(db):
        db.execute(
            "INSERT INTO pending_approvals (approval_id, session_id, request_id, action, payload, "
            "created_at, agent_group_id, channel_type, platform_id, expires_at, status, title, "
            "options_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (aid, session_id, aid, action, dumps(payload), iso(now), agent_group_id, channel_type,
             platform_id, iso(expires_at) if expires_at else None, title, dumps(opts)),
        )  # fmt: skip
    out = get_approval(db, aid)
    assert out is not None
    return out


def get_approval(db: sqlite3.Connection, approval_id: str) -> PendingApproval | None:
    row = db.execute("SELECT * FROM pending_approvals WHERE approval_id=?", (approval_id,))
    return from_row(PendingApproval, row.fetchone())


def list_approvals(db: sqlite3.Connection, status: str | None = "pending") -> list[PendingApproval]:
    if status is None:
        rows = db.execute("SELECT * FROM pending_approvals ORDER BY created_at")
    else:
        rows = db.execute(
            "SELECT * FROM pending_approvals WHERE status=? ORDER BY created_at", (status,)
        )
    return from_rows(PendingApproval, rows.fetchall())


def set_approval_status(
    db: sqlite3.Connection, approval_id: str, status: str, *, expected: str = "pending"
) -> bool:
    """Move an approval out of ``expected``; False when someone else decided first."""
    if status not in APPROVAL_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(APPROVAL_STATUSES)}")
    if get_approval(db, approval_id) is None:
        raise NotFoundError(f"no approval {approval_id!r}")
    cur = db.execute(
        "UPDATE pending_approvals SET status=? WHERE approval_id=? AND status=?",
        (status, approval_id, expected),
    )
    return cur.rowcount > 0


def set_approval_message_id(
    db: sqlite3.Connection, approval_id: str, platform_message_id: str
) -> None:
    db.execute(
        "UPDATE pending_approvals SET platform_message_id=? WHERE approval_id=?",
        (platform_message_id, approval_id),
    )


@dataclass(frozen=True)
class PendingSenderApproval:
    id: str
    messaging_group_id: str
    agent_group_id: str
    sender_identity: str
    sender_name: str | None
    original_message: str
    approver_user_id: str
    created_at: str
    title: str
    options_json: str


def create_sender_approval(
    db: sqlite3.Connection,
    messaging_group_id: str,
    agent_group_id: str,
    sender_identity: str,
    original_message: dict[str, Any],
    approver_user_id: str,
    *,
    sender_name: str | None = None,
    title: str = "",
    options: list[Any] | None = None,
    now: datetime | None = None,
) -> PendingSenderApproval | None:
    """One card per (chat, sender): returns None when one is pending already (race-safe)."""
    sid = new_id("nsa", now)
    cur = db.execute(
        "INSERT OR IGNORE INTO pending_sender_approvals (id, messaging_group_id, agent_group_id, "
        "sender_identity, sender_name, original_message, approver_user_id, created_at, title, "
        "options_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sid, messaging_group_id, agent_group_id, sender_identity, sender_name,
         dumps(original_message), approver_user_id, iso(now), title,
         dumps(normalize_options(options or []))),
    )  # fmt: skip
    if cur.rowcount == 0:
        return None
    return get_sender_approval(db, sid)


def get_sender_approval(db: sqlite3.Connection, id: str) -> PendingSenderApproval | None:
    row = db.execute("SELECT * FROM pending_sender_approvals WHERE id=?", (id,)).fetchone()
    return from_row(PendingSenderApproval, row)


def sender_approval_for(
    db: sqlite3.Connection, messaging_group_id: str, sender_identity: str
) -> PendingSenderApproval | None:
    """The pending row of this sender in this chat (there is at most one)."""
    row = db.execute(
        "SELECT * FROM pending_sender_approvals WHERE messaging_group_id=? AND sender_identity=?",
        (messaging_group_id, sender_identity),
    ).fetchone()
    return from_row(PendingSenderApproval, row)


def list_sender_approvals(db: sqlite3.Connection) -> list[PendingSenderApproval]:
    rows = db.execute("SELECT * FROM pending_sender_approvals ORDER BY created_at").fetchall()
    return from_rows(PendingSenderApproval, rows)


def delete_sender_approval(db: sqlite3.Connection, id: str) -> bool:
    return db.execute("DELETE FROM pending_sender_approvals WHERE id=?", (id,)).rowcount > 0


@dataclass(frozen=True)
class PendingChannelApproval:
    messaging_group_id: str
    agent_group_id: str
    original_message: str
    approver_user_id: str
    created_at: str
    title: str
    options_json: str


def create_channel_approval(
    db: sqlite3.Connection,
    messaging_group_id: str,
    agent_group_id: str,
    original_message: dict[str, Any],
    approver_user_id: str,
    *,
    title: str = "",
    options: list[Any] | None = None,
    now: datetime | None = None,
) -> PendingChannelApproval | None:
    """One registration card per chat: None when one is pending already (race-safe)."""
    cur = db.execute(
        "INSERT OR IGNORE INTO pending_channel_approvals (messaging_group_id, agent_group_id, "
        "original_message, approver_user_id, created_at, title, options_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (messaging_group_id, agent_group_id, dumps(original_message), approver_user_id, iso(now),
         title, dumps(normalize_options(options or []))),
    )  # fmt: skip
    if cur.rowcount == 0:
        return None
    return get_channel_approval(db, messaging_group_id)


def get_channel_approval(
    db: sqlite3.Connection, messaging_group_id: str
) -> PendingChannelApproval | None:
    row = db.execute(
        "SELECT * FROM pending_channel_approvals WHERE messaging_group_id=?", (messaging_group_id,)
    ).fetchone()
    return from_row(PendingChannelApproval, row)


def list_channel_approvals(db: sqlite3.Connection) -> list[PendingChannelApproval]:
    rows = db.execute("SELECT * FROM pending_channel_approvals ORDER BY created_at").fetchall()
    return from_rows(PendingChannelApproval, rows)


def delete_channel_approval(db: sqlite3.Connection, messaging_group_id: str) -> bool:
    cur = db.execute(
        "DELETE FROM pending_channel_approvals WHERE messaging_group_id=?", (messaging_group_id,)
    )
    return cur.rowcount > 0
