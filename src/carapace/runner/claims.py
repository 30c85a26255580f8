"""A turn's claim, committed only when the turn lasts (issue 19).

Before a turn the runner claims its batch (``processing`` in ``processing_ack``), so that
a runner that dies in the turn costs those messages a try (the host's poison-message limit,
``max_tries``; ``sweep.reset_claims``). Most turns of a local model, a command or a task
script end within a few milliseconds, and their reply's commit replaces the claim by
``completed`` at once: the claim's own durable commit (three syncs, ~1.2 ms, a fifth of a
warm round trip, and a pass of the host that finds nothing to do) bought nothing.

So a claim waits here, in memory, and is committed

* once it is :data:`CLAIM_DELAY_S` old, by the runner's keepalive thread (a turn still
  running: a provider's answer takes longer than that; runner/keepalive.py);
* with the turn's first other write (a message it sends, a tool it starts: the host never
  sees a turn's output without its claim; ``Outbound.write``, ``Outbound.set_tool``);
* at :meth:`DeferredClaims.close` (the runner ends with a turn under way: an exception
  out of it takes this path, so a message that makes the runner fail still costs a try);
* at the turn's start when the keepalive has no thread (a task limit reached);

and never when the turn ends first: its ``completed``/``failed`` acks, once committed, or
its release drop it (:meth:`DeferredClaims.drop`). The thread writes with ``INSERT OR
IGNORE``, so a claim committed while the turn's end commits never replaces that end's ack.

The cost: a runner killed (a signal, not an exception) within :data:`CLAIM_DELAY_S` of
taking a batch leaves no claim, so that try is not counted (docs/compat.md).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

from carapace.db.connection import transaction
from carapace.log import get_logger

logger = get_logger(__name__)

CLAIM_DELAY_S = 0.05
RETRY_S = 1.0  # after a failed commit (a full disk): the claim stays and is tried again

_INSERT = (
    "INSERT OR IGNORE INTO processing_ack (message_id, status, status_changed) "
    "VALUES (?, 'processing', ?)"
)


class DeferredClaims:
    """Claims taken and not yet committed. The runner's keepalive thread commits them once
    :attr:`due` (runner/keepalive.py).

    ``connect`` opens the connection commits use (at the first; used under the lock, from
    the keepalive thread or the runner's: it must allow any thread). Every method is
    thread-safe; a commit runs with the lock held, so :meth:`drop` returns only once a
    commit under way has ended (a release then deletes what it wrote)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 delay: float = CLAIM_DELAY_S) -> None:  # fmt: skip
        self.connect = connect
        self.delay = delay
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # message id → when it was claimed
        self._due: float | None = None  # monotonic deadline of the oldest pending claim
        self._conn: sqlite3.Connection | None = None

    @property
    def due(self) -> float | None:
        """When the pending claims are to be committed (``time.monotonic``), or None."""
        with self._lock:
            return self._due

    def add(self, ids: Iterable[str], when: str) -> None:
        with self._lock:
            for i in ids:
                self._pending.setdefault(i, when)
            if self._due is None and self._pending:
                self._due = time.monotonic() + self.delay

    def drop(self, ids: Iterable[str]) -> None:
        """The turn of ``ids`` ended (acks committed) or was released: no claim for them."""
        with self._lock:
            for i in ids:
                self._pending.pop(i, None)
            if not self._pending:
                self._due = None

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def items(self) -> list[tuple[str, str]]:
        """The pending claims, (message id, when), for a write of the turn to carry (never
        call it with a transaction open: a commit under way may be waiting for that lock)."""
        with self._lock:
            return list(self._pending.items())

    @staticmethod
    def write(conn: sqlite3.Connection, items: list[tuple[str, str]]) -> None:
        """Write ``items`` (from :meth:`items`) into ``conn``'s open transaction."""
        conn.executemany(_INSERT, items)

    def commit(self) -> None:
        """Commit every pending claim now. A failure (a full disk) keeps them, due again
        in :data:`RETRY_S`."""
        with self._lock:
            if not self._pending:
                self._due = None
                return
            rows = list(self._pending.items())
            try:
                if self._conn is None:
                    self._conn = self.connect()
                with transaction(self._conn):
                    self.write(self._conn, rows)
            except sqlite3.Error as exc:
                logger.warning("claims of %d message(s) not committed yet: %s", len(rows), exc)
                self._due = time.monotonic() + RETRY_S
                return
            self._pending.clear()
            self._due = None

    def close(self) -> None:
        """Commit what is pending (the runner ends in a turn), then close the connection."""
        self.commit()
        with self._lock:
            if self._pending:
                logger.error("claims of %s not committed", sorted(self._pending))
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
