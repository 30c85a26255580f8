"""The saved conversation: one ``session_state`` row per message (issue 19).

A turn's commit used to rewrite the whole bounded conversation as one JSON value: on this
project's test disk ~0.15 ms more per commit at 200 short messages, and ~3.5 ms near the
500 KB cap, where each turn wrote ~1 MB (the journal and the file). Now each message is a
row keyed ``conversation/<position>`` (twelve digits: key order is message order), and a
save writes the messages new since the last one and deletes those the bound cut.

The row ``conversation/`` (the prefix itself) marks the format and counts the saves. A save
runs in the caller's transaction; one that was rolled back leaves the count behind, and the
next save then rewrites every row instead of trusting what this process thinks is stored.
So does a save by a process that did not read or write the rows itself.

A conversation saved by an older runner (one ``conversation`` value, a JSON list) is read
as before and replaced by rows at the next save. With neither there is no saved
conversation (the runner rebuilds one from the transcript); a cleared one is the marker
alone.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from datetime import datetime

from carapace.db.session import (
    CONVERSATION_END,
    CONVERSATION_KEY,
    CONVERSATION_PREFIX,
    conversation_key,
)
from carapace.log import get_logger
from carapace.runner.compaction import Encoded
from carapace.timefmt import iso, utcnow

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from carapace.runner.providers.base import Message

logger = get_logger(__name__)

_RANGE = "key >= ? AND key < ?"
CUT_LOOKED_AT = 32  # messages a save looks for, in Python, at the start (cut) and end (new)

_Row = tuple[int, "Message"]
# (rows, added, removed positions, the id() of every row's message)
_Plan = tuple[list[_Row], list[_Row], list[int], set[int]]


def _count(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _message(value: str) -> Message | None:
    try:
        m = json.loads(value)
    except ValueError:
        return None
    return m if isinstance(m, dict) and m.get("role") else None


class ConversationStore:
    """One runner's view of its saved conversation (see the module docstring)."""

    def __init__(self) -> None:
        self._rows: list[_Row] | None = None  # (position, message) as this process saved
        self._ids: set[int] | None = None  # id() of each of their messages (held by _rows)
        self._count: int | None = None  # the marker's count after this process's last save

    def load(self, conn: sqlite3.Connection) -> list[Message] | None:
        """The saved conversation; None when there is none (or the old value is not a
        list). Rows that do not parse are left out (and the next save rewrites all)."""
        found = conn.execute(
            f"SELECT key, value FROM session_state WHERE {_RANGE} ORDER BY key",
            (CONVERSATION_PREFIX, CONVERSATION_END),
        ).fetchall()
        if found and found[0][0] == CONVERSATION_PREFIX:
            rows: list[_Row] = []
            damaged = False
            for key, value in found[1:]:
                pos, m = _count(key[len(CONVERSATION_PREFIX) :]), _message(value)
                if pos is None or m is None:
                    damaged = True
                    continue
                rows.append((pos, m))
            if damaged:
                logger.warning("stored conversation: unreadable rows left out")
            self._rows, self._ids = (None if damaged else rows), None
            self._count = _count(found[0][1])
            return [m for _, m in rows]
        self._rows = self._count = self._ids = None
        row = conn.execute(
            "SELECT value FROM session_state WHERE key = ?", (CONVERSATION_KEY,)
        ).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            logger.warning("stored conversation is not JSON")
            return None
        if not isinstance(value, list):
            return None
        return [m for m in value if isinstance(m, dict) and m.get("role")]

    def save(self, conn: sqlite3.Connection, messages: list[Message], encoded: Encoded,
             now: datetime | None = None) -> None:  # fmt: skip
        """Store ``messages`` (already bounded) in the caller's transaction: only what
        changed since this process's last save when that save is the one on disk."""
        marker = conn.execute(
            "SELECT value FROM session_state WHERE key = ?", (CONVERSATION_PREFIX,)
        ).fetchone()
        count = _count(marker[0]) if marker is not None else None
        plan = None
        if self._rows is not None and count is not None and count == self._count:
            plan = self._plan(messages)
        ts = iso(now or utcnow())
        insert = (
            "INSERT INTO session_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at"
        )
        if plan is None:  # everything again
            conn.execute(
                f"DELETE FROM session_state WHERE key = ? OR ({_RANGE})",
                (CONVERSATION_KEY, CONVERSATION_PREFIX, CONVERSATION_END),
            )
            rows: list[_Row] = list(enumerate(messages))
            added, ids = rows, {id(m) for m in messages}
        else:
            rows, added, removed, ids = plan
            conn.executemany(
                "DELETE FROM session_state WHERE key = ?", [(conversation_key(p),) for p in removed]
            )
        conn.executemany(insert, [(conversation_key(p), encoded.json(m), ts) for p, m in added])
        self._count = (count or 0) + 1
        conn.execute(insert, (CONVERSATION_PREFIX, str(self._count), ts))
        self._rows, self._ids = rows, ids

    def _plan(self, messages: list[Message]) -> _Plan | None:
        """(rows, added, removed positions, ids) when ``messages`` is some of the stored
        ones, in their order, then new ones; None otherwise (a new first message: a
        compaction)."""
        rows = self._rows
        assert rows is not None
        if self._ids is None:
            self._ids = {id(m) for _p, m in rows}
        return self._plan_tail(rows, self._ids, messages) or self._plan_any(rows, messages)

    @staticmethod
    def _plan_tail(rows: list[_Row], ids: set[int], messages: list[Message]) -> _Plan | None:
        """:meth:`_plan`'s usual case with no pass in Python over the whole history (issue
        19: ~0.1 ms a turn at 200 messages): the stored rows less a few at their start (the
        bound's cut), then a few new messages. None when ``messages`` is anything else."""
        if not rows or not messages:
            return None
        first = messages[0]
        cut = next((i for i, (_p, m) in enumerate(rows[:CUT_LOOKED_AT]) if m is first), None)
        if cut is None:
            return None
        kept = rows[cut:]
        new = messages[len(kept) :]
        if (
            len(messages) < len(kept)
            or len(new) > CUT_LOOKED_AT
            or not all(
                map(operator.is_, messages, [m for _p, m in kept])  # (identity, in C)
            )
        ):
            return None
        if any(id(m) in ids for m in new):
            return None  # a stored message again, after the kept ones
        nxt = rows[-1][0] + 1
        added = [(nxt + i, m) for i, m in enumerate(new)]
        gone = rows[:cut]
        return (kept + added, added, [p for p, _m in gone],
                (ids - {id(m) for _p, m in gone}) | {id(m) for m in new})  # fmt: skip

    @staticmethod
    def _plan_any(rows: list[_Row], messages: list[Message]) -> _Plan | None:
        stored = {id(m): (p, m) for p, m in rows}
        kept: list[_Row] = []
        added: list[_Row] = []
        nxt = rows[-1][0] + 1 if rows else 0
        for m in messages:
            hit = stored.get(id(m))
            if hit is None or hit[1] is not m:
                added.append((nxt, m))
                nxt += 1
            elif added or (kept and hit[0] <= kept[-1][0]):
                return None  # a stored message after a new one, or out of order
            else:
                kept.append(hit)
        keep = {p for p, _ in kept}
        now = kept + added
        return now, added, [p for p, _ in rows if p not in keep], {id(m) for _p, m in now}
