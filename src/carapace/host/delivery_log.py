"""Delivery's bookkeeping in a session's ``inbound.db`` (host tables; issue 14).

* ``carapace_delivery`` — attempts of a row not yet sent (backoff, "no reader" marks);
* ``carapace_delivery_cursor`` — every row at or below ``seq`` is done;
* ``carapace_send_intent`` — rows handed to an adapter whose outcome was not recorded, as
  versions before the host's intent log (``send_intents.py``, issue 19) committed them:
  still read, and cleared with the outcome; no longer written.

:class:`Records` holds what one session's passes have not committed yet; it is written
inside the next transaction: before the next row's intent, or when the records are held
at a pass's end (``host/delivery_hold.py``), by the session's next write, or alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from carapace.db.connection import has_table, transaction
from carapace.timefmt import iso, parse_ts

HOST_TABLES = """
CREATE TABLE IF NOT EXISTS carapace_delivery (
  message_out_id TEXT PRIMARY KEY,
  attempts       INTEGER NOT NULL DEFAULT 0,
  next_attempt   TEXT,
  first_seen     TEXT NOT NULL,
  last_error     TEXT
);
CREATE TABLE IF NOT EXISTS carapace_delivery_cursor (
  id  INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS carapace_send_intent (
  message_out_id TEXT PRIMARY KEY,
  started_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS carapace_preview (
  reply_id            TEXT PRIMARY KEY,
  channel_type        TEXT NOT NULL,
  platform_id         TEXT NOT NULL,
  thread_id           TEXT,
  platform_message_id TEXT NOT NULL,
  created_at          TEXT NOT NULL
);
"""
NEWEST_HOST_TABLE = "carapace_preview"  # present: every host table is
RECORD_RETRY_S = 5.0  # a pass whose records could not be written (full disk) runs again
MAX_DELIVERY_ATTEMPTS = 3
UNAVAILABLE_RETRY_S = 30.0
UNAVAILABLE_TTL_S = 24 * 3600.0
UNAVAILABLE_MARK = "no reader: "  # an attempt's error while the channel has no reader


@dataclass
class RideAlong:
    """Another write of the host's to a session's ``inbound.db`` that shares a commit
    instead of making one of its own (issue 19): the runner's acks riding with delivery's
    outcomes, or delivery's held outcomes with the session's next rows
    (``host/delivery_hold.py``). ``apply`` runs in that transaction (the writer thread),
    then ``done`` hears its result, or ``undo`` is called when the commit did not happen
    (what it carried is to be written later)."""

    apply: Callable[[sqlite3.Connection], Any]
    done: Callable[[Any], None]
    undo: Callable[[], None]


def backoff_s(attempts: int) -> float:
    return float(2 ** max(0, attempts - 1))


def delivery_key(session_id: str, row_id: str) -> str:
    """The row's idempotency key: stable across attempts and restarts, unique per session
    (row ids are agent-chosen: the session id keeps one agent from reusing another's)."""
    raw = f"{session_id}\0{row_id}".encode("utf-8", "replace")
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass
class Records:
    """Outcomes of one session not yet committed (written with the next transaction)."""

    outcomes: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)
    attempts: dict[str, tuple[int, str, str, str]] = field(default_factory=dict)
    cursor: int | None = None
    # the inbound.db they belong to (session_writer.Key; a re-made session folder: dropped)
    key: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.attempts or self.cursor is not None)

    def state(self, states: dict[str, dict[str, Any]], rid: str) -> dict[str, Any] | None:
        """Row ``rid``'s attempt state: as committed (``states``, from :func:`known_of`),
        with the attempts recorded here and not yet written."""
        st = states.get(rid)
        out: dict[str, Any] | None = dict(st) if st is not None else None
        mem = self.attempts.get(rid)
        if mem is not None:
            inc, nxt, first, err = mem
            base = out or {"attempts": 0, "first_seen": first}
            out = {**base, "attempts": int(base["attempts"] or 0) + inc, "next_attempt": nxt,
                   "last_error": err}  # fmt: skip
        return out

    def record_attempt(self, rid: str, inc: int, nxt: datetime, err: str, now: datetime,
                       st: dict[str, Any] | None) -> None:  # fmt: skip
        """An attempt of row ``rid`` (``inc`` counted: 0 for a wait for a reader), tried
        again at ``nxt``; ``st`` its state before (:meth:`state`)."""
        prev = self.attempts.get(rid)
        total = inc + (prev[0] if prev else 0)
        first = prev[2] if prev else (str(st["first_seen"]) if st else iso(now))
        self.attempts[rid] = (total, iso(nxt), first, err[:500])

    def take(self) -> Records:
        """What is held now, as a record of its own; this one is left empty (same file):
        what a pass records while that is being written is not mixed up with it."""
        snap = Records(self.outcomes, self.attempts, self.cursor, self.key)
        self.outcomes, self.attempts, self.cursor = {}, {}, None
        return snap

    def restore(self, snap: Records) -> None:
        """Put back what :meth:`take` gave when its commit did not happen (records made
        since are newer: they win; attempts add up)."""
        if snap.key is not None and self.key is not None and snap.key != self.key:
            return  # of a file made again since: nothing to write them to
        self.key = self.key or snap.key
        for rid, outcome in snap.outcomes.items():
            self.outcomes.setdefault(rid, outcome)
        for rid, (inc, nxt, first, err) in snap.attempts.items():
            now = self.attempts.get(rid)
            self.attempts[rid] = (inc, nxt, first, err) if now is None else (
                now[0] + inc, now[1], first, now[3])  # fmt: skip
        if snap.cursor is not None:
            self.cursor = max(self.cursor or 0, snap.cursor)

    def write(self, inb: sqlite3.Connection) -> None:
        """Inside the caller's transaction."""
        inb.executemany(
            "INSERT OR IGNORE INTO delivered (message_out_id, platform_message_id, status, "
            "delivered_at) VALUES (?, ?, ?, ?)",
            [(rid, pm, st, ts) for rid, (st, pm, ts) in self.outcomes.items()],
        )
        inb.executemany(
            "INSERT INTO carapace_delivery (message_out_id, attempts, next_attempt, first_seen, "
            "last_error) VALUES (?, ?, ?, ?, ?) ON CONFLICT(message_out_id) DO UPDATE SET "
            "attempts=attempts+excluded.attempts, next_attempt=excluded.next_attempt, "
            "last_error=excluded.last_error",
            [(rid, inc, nxt, first, err) for rid, (inc, nxt, first, err) in self.attempts.items()],
        )
        done = [*self.outcomes, *self.attempts]
        if done and not _no_legacy_intents(inb):
            inb.executemany(
                "DELETE FROM carapace_send_intent WHERE message_out_id=?", [(r,) for r in done]
            )
        if self.cursor is not None:
            inb.execute(
                "INSERT INTO carapace_delivery_cursor (id, seq) VALUES (1, ?) "
                "ON CONFLICT(id) DO UPDATE SET seq=excluded.seq",
                (self.cursor,),
            )


def _no_legacy_intents(inb: sqlite3.Connection) -> bool:
    """Whether ``carapace_send_intent`` (written by versions before issue 19's send-intent
    file, nothing writes it now) is empty: once seen so, the connection keeps it (where it
    takes the note) and a pass's records skip the delete of their rows there."""
    if getattr(inb, "no_legacy_intents", False):
        return True
    if inb.execute("SELECT 1 FROM carapace_send_intent LIMIT 1").fetchone() is not None:
        return False
    with contextlib.suppress(AttributeError):
        inb.no_legacy_intents = True  # type: ignore[attr-defined]
    return True


def wait_until(row: Any, st: dict[str, Any] | None, now: datetime) -> datetime | None:
    """When an outbound row may be tried (its ``deliver_after``, its attempt's backoff; a
    row waiting for a reader is tried at every pass); None: now."""
    waits_for_reader = st is not None and str(st["last_error"] or "").startswith(UNAVAILABLE_MARK)
    nxt = st["next_attempt"] if st is not None and not waits_for_reader else None
    for value in (row["deliver_after"], nxt):
        if value:
            try:
                when = parse_ts(value)
            except ValueError:
                continue
            if when > now:
                return when
    return None


def delivered_of(inb: sqlite3.Connection, ids: list[str]) -> set[str]:
    done: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" for _ in chunk)
        done.update(
            r[0]
            for r in inb.execute(
                f"SELECT message_out_id FROM delivered WHERE message_out_id IN ({marks})", chunk
            )
        )
    return done


def host_tables(inb: sqlite3.Connection) -> None:
    """The host's delivery tables, made when missing (a session folder made again); one
    indexed read when they are there, once per connection where it keeps what it saw (a
    file made again gets a connection of its own)."""
    if getattr(inb, "host_tables_there", False):
        return
    if not has_table(inb, NEWEST_HOST_TABLE):
        with transaction(inb):
            for stmt in HOST_TABLES.split(";"):
                if stmt.strip():
                    inb.execute(stmt)
        if inb.in_transaction:  # made in a transaction still open: it may be undone yet
            return
    with contextlib.suppress(AttributeError):
        inb.host_tables_there = True  # type: ignore[attr-defined]


def tables_and_cursor(inb: sqlite3.Connection) -> int:
    """The host's delivery tables (made when missing: a session folder made again) and the
    delivery cursor. On the session's writer thread."""
    host_tables(inb)
    return delivery_cursor(inb)


def known_of(
    inb: sqlite3.Connection, ids: list[str]
) -> tuple[set[str], dict[str, dict[str, Any]], set[str]]:
    """What inbound.db knows of these outbound rows: done, attempt states, and the send
    intents an older version committed (issue 14). On the session's writer thread."""
    host_tables(inb)  # a folder made again since the cursor was read has none yet
    marks = ",".join("?" for _ in ids)
    states = {
        r["message_out_id"]: dict(r)
        for r in inb.execute(
            f"SELECT * FROM carapace_delivery WHERE message_out_id IN ({marks})", ids
        )
    }
    intents = {
        r[0]
        for r in inb.execute(
            f"SELECT message_out_id FROM carapace_send_intent WHERE message_out_id IN ({marks})",
            ids,
        )
    }
    return delivered_of(inb, ids), states, intents


def delivery_cursor(inb: sqlite3.Connection) -> int:
    """The delivery cursor of a session's inbound.db (0 before the first delivery)."""
    try:
        row = inb.execute("SELECT seq FROM carapace_delivery_cursor WHERE id=1").fetchone()
    except sqlite3.OperationalError:  # no delivery yet: the table comes with the first
        row = None
    return int(row[0]) if row is not None and isinstance(row[0], int) else 0
