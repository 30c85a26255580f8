"""``unregistered_senders``: the audit of dropped messages, keyed per chat as in NanoClaw.

Fixes spec §11.4 item 39: one inbound event is recorded at most once (the caller passes
the event's first reason; later reasons of the same event are not written), and the reason
of an earlier event is only replaced by a newer event, never within one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from carapace.db.central import from_rows
from carapace.db.connection import transaction
from carapace.timefmt import iso

REASONS = (
    "no_agent_wired",
    "no_agent_engaged",
    "unknown_sender_strict",
    "unknown_sender_request_approval",
    "unknown_sender_denied",
    "sender_scope",
    "channel_denied",
)


@dataclass(frozen=True)
class DroppedChat:
    channel_type: str
    platform_id: str
    user_id: str | None
    sender_name: str | None
    reason: str
    messaging_group_id: str | None
    agent_group_id: str | None
    message_count: int
    first_seen: str
    last_seen: str


def record_dropped(
    db: sqlite3.Connection,
    channel_type: str,
    platform_id: str,
    reason: str,
    *,
    user_id: str | None = None,
    sender_name: str | None = None,
    messaging_group_id: str | None = None,
    agent_group_id: str | None = None,
    now: datetime | None = None,
) -> None:
    ts = iso(now)
    with transaction(db):
        db.execute(
            "INSERT INTO unregistered_senders (channel_type, platform_id, user_id, sender_name, "
            "reason, messaging_group_id, agent_group_id, message_count, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?) ON CONFLICT(channel_type, platform_id) DO "
            "UPDATE SET user_id=COALESCE(excluded.user_id, user_id), "
            "sender_name=COALESCE(excluded.sender_name, sender_name), reason=excluded.reason, "
            "messaging_group_id=COALESCE(excluded.messaging_group_id, messaging_group_id), "
            "agent_group_id=COALESCE(excluded.agent_group_id, agent_group_id), "
            "message_count=message_count+1, last_seen=excluded.last_seen",
            (channel_type, platform_id, user_id, sender_name, reason, messaging_group_id,
             agent_group_id, ts, ts),
        )  # fmt: skip


def list_dropped(db: sqlite3.Connection, limit: int = 100) -> list[DroppedChat]:
    rows = db.execute(
        "SELECT * FROM unregistered_senders ORDER BY last_seen DESC LIMIT ?", (limit,)
    ).fetchall()
    return from_rows(DroppedChat, rows)


def clear_dropped(db: sqlite3.Connection, channel_type: str, platform_id: str) -> bool:
    cur = db.execute(
        "DELETE FROM unregistered_senders WHERE channel_type=? AND platform_id=?",
        (channel_type, platform_id),
    )
    return cur.rowcount > 0
