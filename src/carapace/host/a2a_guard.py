"""Loop guard for agent-to-agent messages (a carapace addition to spec §4.7).

Two agents that answer each other can talk forever (QA: 270+ messages). Two bounds:

* **Hops.** Every a2a row carries ``a2aHops`` in its content (NanoClaw ignores extra
  fields). An agent's message that answers (``in_reply_to``) an inbound a2a row has that
  row's hops + 1; any other a2a message starts a chain at 1. Above ``max_hops`` the message
  is not routed.
* **Rate.** At most ``rate_limit`` a2a messages per ``window_s`` from one session.

A stopped message is ``failed`` in ``delivered`` (permanent ``DeliveryError``), and the
sender gets one system note saying why. The note carries ``a2aHops`` above the limit, so an
agent that answers the note with another a2a message is stopped again, silently: a note is
written only for the first message past the hop limit, and at most once per window.
State is in memory (a restart forgets the rate window); times are the host clock's.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from carapace.db.sessions import Session
from carapace.errors import DeliveryError
from carapace.host.sessions import SessionManager
from carapace.jsonutil import dumps, loads_or
from carapace.timefmt import iso, new_id

logger = logging.getLogger(__name__)

A2A_MAX_HOPS = 8
A2A_RATE_LIMIT = 30
A2A_RATE_WINDOW_S = 60.0
HOPS_FIELD = "a2aHops"


class A2AStopped(DeliveryError):
    """An a2a message refused by the guard (always permanent). ``notify`` is False when the
    sender has already been told; ``hops`` is what the stop note carries."""

    def __init__(self, message: str, *, hops: int, notify: bool) -> None:
        super().__init__(message, permanent=True)
        self.hops = hops
        self.notify = notify


def hops_of(parent: sqlite3.Row | None) -> int:
    """The hop count of an inbound row (0 unless it is an agent-channel row carrying one)."""
    if parent is None or parent["channel_type"] != "agent":
        return 0
    content = loads_or(parent["content"], None)
    value = content.get(HOPS_FIELD) if isinstance(content, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


@dataclass
class A2AGuard:
    max_hops: int = A2A_MAX_HOPS
    rate_limit: int = A2A_RATE_LIMIT
    window_s: float = A2A_RATE_WINDOW_S
    _sent: dict[str, deque[datetime]] = field(default_factory=dict)
    _told: dict[str, datetime] = field(default_factory=dict)

    def check(self, session_id: str, hops: int, now: datetime) -> None:
        """Raise ``A2AStopped`` when a message of ``hops`` from the session may not go."""
        cutoff = now - timedelta(seconds=self.window_s)
        sent = self._sent.get(session_id)
        while sent and sent[0] <= cutoff:
            sent.popleft()
        if hops > self.max_hops:
            first = hops == self.max_hops + 1
            raise A2AStopped(
                f"agent-to-agent chain stopped after {self.max_hops} messages of agents "
                "answering each other (a loop?)",
                hops=hops,
                notify=first and self._tell(session_id, now, cutoff),
            )
        if sent is not None and len(sent) >= self.rate_limit:
            raise A2AStopped(
                f"agent-to-agent rate limit: more than {self.rate_limit} messages in "
                f"{self.window_s:g} s from this session",
                hops=self.max_hops + 1,
                notify=self._tell(session_id, now, cutoff),
            )

    def record(self, session_id: str, now: datetime) -> None:
        self._sent.setdefault(session_id, deque()).append(now)

    def _tell(self, session_id: str, now: datetime, cutoff: datetime) -> bool:
        told = self._told.get(session_id)
        if told is not None and told > cutoff:
            return False
        self._told[session_id] = now
        return True


def write_stop_note(
    sessions: SessionManager, session: Session, seq: int, exc: A2AStopped, now: datetime
) -> str:
    """The system note (spec §2.10 shape, plus ``a2aHops``) telling the sender why."""
    mid = new_id("sys", now)
    text = (
        f"Your message (seq {seq}) to another agent was not delivered: {exc}. "
        "Do not answer this note with another agent message; tell the user if needed."
    )
    sessions.write_message(
        session,
        {
            "id": mid, "kind": "chat", "timestamp": iso(now),
            "platform_id": session.agent_group_id, "channel_type": "agent", "thread_id": None,
            "content": dumps({"text": text, "sender": "system", "senderId": "system",
                              HOPS_FIELD: exc.hops}),
        },
        now=now,
    )  # fmt: skip
    logger.warning("a2a from session %s stopped (seq %s): %s", session.id, seq, exc)
    return mid
