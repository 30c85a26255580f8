"""Writing ``outbound.db``: messages (odd seq), processing acks, session state, tool in flight.

The runner is the only writer of this file (DESIGN §1). Every message insert allocates
its odd seq inside ``BEGIN IMMEDIATE`` (fixes W-2), looking at ``inbound.db``'s highest
seq through the runner's read-only inbound connection, in a read transaction of its own
(fixes the stale read of W-7).

Ack life cycle (``processing_ack``)::

    (absent) --claim--> processing --complete--> completed
                                   --fail------> failed
                                   --release---> (absent)    abandoned turn (SIGTERM)
    processing --recover (runner start)--> (absent)           a dead runner's claims

A claim is committed only once its turn has run ``CLAIM_DELAY_S`` (runner/claims.py): a
turn that ends sooner goes from (absent) to its end in one commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from carapace.db.connection import transaction
from carapace.db.session import SessionPaths, insert_message_out, open_outbound, peek_max_seq
from carapace.jsonutil import dumps
from carapace.runner.claims import CLAIM_DELAY_S, DeferredClaims
from carapace.timefmt import iso, sqlite_ts, utcnow

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


_CHUNK = 500


class Outbound:
    """The runner's long-lived read-write connection to ``outbound.db``."""

    def __init__(self, paths: SessionPaths, inbound_max: Callable[[], int] | None = None,
                 claim_delay_s: float = CLAIM_DELAY_S) -> None:  # fmt: skip
        self.paths = paths
        self.conn = open_outbound(paths)
        # the host side's highest seq (the runner's persistent inbound connection); a fresh
        # read-only connection per message when not given
        self.inbound_max = inbound_max or (lambda: peek_max_seq(paths.inbound, "messages_in"))
        # claims not committed yet (0: each claim is committed at once)
        self.claims = DeferredClaims(lambda: open_outbound(paths, shared=True), claim_delay_s)
        self._ended: list[str] = []  # acked in the open transaction: dropped once it commits

    def close(self) -> None:
        """Commit the claims still pending (the runner ends in a turn), then close."""
        self.claims.close()
        self.conn.close()

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """Group several writes (reply + acks + state) into one transaction."""
        try:
            with transaction(self.conn) as conn:
                yield conn
        except BaseException:
            if not self.conn.in_transaction:
                self._ended.clear()  # rolled back: those claims stay pending
            raise
        self._committed()

    def _committed(self) -> None:
        """After a write: once no transaction is open, the turns acked in it are over and
        their pending claims are never to be written."""
        if self._ended and not self.conn.in_transaction:
            ended, self._ended = self._ended, []
            self.claims.drop(ended)

    # --- messages --------------------------------------------------------------------------

    def write(
        self,
        *,
        id: str,
        kind: str,
        content: dict[str, Any],
        platform_id: str | None = None,
        channel_type: str | None = None,
        thread_id: str | None = None,
        in_reply_to: str | None = None,
        now: datetime | None = None,
        once: bool = False,
    ) -> int:
        """Insert one ``messages_out`` row; returns its (odd) seq. ``once``: when a row with
        this id exists already (a retried turn's tool message), write nothing and return
        that row's seq."""
        if once and (seq := self.seq_of(id)) is not None:
            return seq
        claims = [] if self.conn.in_transaction else self.claims.items()
        row = {
            "id": id,
            "in_reply_to": in_reply_to,
            "timestamp": sqlite_ts(now or utcnow()),
            "kind": kind,
            "platform_id": platform_id,
            "channel_type": channel_type,
            "thread_id": thread_id,
            "content": dumps(content),
        }
        if not claims:
            return insert_message_out(self.conn, row, other_max=self.inbound_max())
        with transaction(self.conn):  # the turn's first output carries its claim
            self.claims.write(self.conn, claims)
            seq = insert_message_out(self.conn, row, other_max=self.inbound_max())
        self.claims.drop(i for i, _ in claims)
        return seq

    def seq_of(self, id: str) -> int | None:
        row = self.conn.execute("SELECT seq FROM messages_out WHERE id = ?", (id,)).fetchone()
        return int(row[0]) if row is not None else None

    def by_seq(self, seq: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM messages_out WHERE seq = ?", (seq,)
        ).fetchone()
        return row

    def undelivered_actions(self, action: str) -> list[dict[str, Any]]:
        """Contents of ``kind='system'`` rows with ``action`` (the caller filters delivered)."""
        rows = self.conn.execute(
            "SELECT id, content FROM messages_out WHERE kind = 'system' AND instr(content, ?) > 0 "
            "ORDER BY seq",
            (f'"action":"{action}"',),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for r in rows:
            try:
                data = json.loads(r["content"])
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("action") == action:
                out.append({"_row_id": r["id"], **data})
        return out

    # --- acks ------------------------------------------------------------------------------

    def acked(self, ids: Iterable[str]) -> dict[str, str]:
        """``{message_id: status}`` for those of ``ids`` that have an ack row, or a claim
        not committed yet (``processing``)."""
        id_list = list(ids)
        out: dict[str, str] = {}
        claimed = self.claims.pending()
        for i in range(0, len(id_list), _CHUNK):
            chunk = id_list[i : i + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            for r in self.conn.execute(
                f"SELECT message_id, status FROM processing_ack WHERE message_id IN ({marks})",
                chunk,
            ):
                out[r[0]] = r[1]
        for mid in id_list:
            if mid in claimed and mid not in out:
                out[mid] = "processing"
        return out

    def _set_ack(self, ids: Iterable[str], status: str, now: datetime | None) -> None:
        id_list = list(ids)
        if not id_list:
            return
        ts = sqlite_ts(now or utcnow())
        with transaction(self.conn):
            self.conn.executemany(
                "INSERT OR REPLACE INTO processing_ack (message_id, status, status_changed) "
                "VALUES (?, ?, ?)",
                [(i, status, ts) for i in id_list],
            )
            if status != "processing":
                self._ended += id_list
        self._committed()

    def claim(self, ids: Iterable[str], now: datetime | None = None) -> None:
        """Claim a batch for a turn: committed once the turn has run ``claim_delay_s``
        (runner/claims.py), at once when that is 0."""
        if self.claims.delay <= 0:
            self._set_ack(ids, "processing", now)
        else:
            self.claims.add(ids, sqlite_ts(now or utcnow()))

    def complete(self, ids: Iterable[str], now: datetime | None = None) -> None:
        self._set_ack(ids, "completed", now)

    def fail(self, ids: Iterable[str], now: datetime | None = None) -> None:
        self._set_ack(ids, "failed", now)

    def release(self, ids: Iterable[str]) -> None:
        """Drop our own ``processing`` claims so the next runner takes the rows again."""
        id_list = list(ids)
        self.claims.drop(id_list)  # (waits for a commit of them under way: deleted below)
        with transaction(self.conn):
            for i in range(0, len(id_list), _CHUNK):
                chunk = id_list[i : i + _CHUNK]
                marks = ",".join("?" for _ in chunk)
                self.conn.execute(
                    "DELETE FROM processing_ack WHERE status = 'processing' "
                    f"AND message_id IN ({marks})",
                    chunk,
                )

    def recover(self) -> int:
        """Startup recovery: release every claim a previous (dead) runner left behind."""
        with transaction(self.conn):
            cur = self.conn.execute("DELETE FROM processing_ack WHERE status = 'processing'")
        return cur.rowcount

    # --- session state ---------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM session_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row is not None else None

    def set_state(self, key: str, value: str, now: datetime | None = None) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO session_state (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (key, value, iso(now or utcnow())),
            )

    def delete_state(self, key: str) -> None:
        with transaction(self.conn):
            self.conn.execute("DELETE FROM session_state WHERE key = ?", (key,))

    # --- tool in flight (container_state, read by the host's stuck rule) --------------------

    def set_tool(self, name: str | None, timeout_ms: int | None = None) -> None:
        now = iso(utcnow())
        claims = [] if self.conn.in_transaction else self.claims.items()
        with transaction(self.conn):
            self.claims.write(self.conn, claims)  # (a tool of the turn starts: its claim too)
            self.conn.execute(
                "INSERT INTO container_state (id, current_tool, tool_declared_timeout_ms, "
                "tool_started_at, updated_at) VALUES (1, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                "SET current_tool = excluded.current_tool, "
                "tool_declared_timeout_ms = excluded.tool_declared_timeout_ms, "
                "tool_started_at = excluded.tool_started_at, updated_at = excluded.updated_at",
                (name, timeout_ms, now if name else None, now),
            )
        self.claims.drop(i for i, _ in claims)
