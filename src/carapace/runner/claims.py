"""A turn's claim, committed only when the turn lasts (issue 19).

Before a turn the runner claims its batch (``processing`` in ``processing_ack``), so that
a runner that dies in the turn costs those messages a try (the host's poison-message limit,
``max_tries``; ``sweep.reset_claims``). Most turns of a local model, a command or a task
script end within a few milliseconds, and their reply's commit replaces the claim by
``completed`` at once: the claim's own durable commit (three syncs, ~1.2 ms, a fifth of a
warm round trip, and a pass of the host that finds nothing to do) bought nothing.

So a claim waits here, in memory, and is committed

* by a thread of its own once it is :data:`CLAIM_DELAY_S` old (a turn still running: a
  provider's answer takes longer than that);
* with the turn's first other write (a message it sends, a tool it starts: the host never
  sees a turn's output without its claim; ``Outbound.write``, ``Outbound.set_tool``);
* at :meth:`DeferredClaims.close` (the runner ends with a turn under way: an exception
  out of it takes this path, so a message that makes the runner fail still costs a try);
* at once when no thread can be started (a task limit reached);

and never when the turn ends first: its ``completed``/``failed`` acks, once committed, or
its release drop it (:meth:`DeferredClaims.drop`). The thread writes with ``INSERT OR
IGNORE``, so a claim committed while the turn's end commits never replaces that end's ack.

The cost: a runner killed (a signal, not an exception) within :data:`CLAIM_DELAY_S` of
taking a batch leaves no claim, so that try is not counted (docs/compat.md).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

from carapace.db.connection import transaction

logger = logging.getLogger(__name__)

CLAIM_DELAY_S = 0.05
RETRY_S = 1.0  # after a failed commit (a full disk): the claim stays and is tried again

_INSERT = (
    "INSERT OR IGNORE INTO processing_ack (message_id, status, status_changed) "
    "VALUES (?, 'processing', ?)"
)


class DeferredClaims:
    """Claims taken and not yet committed, and the thread that commits them when due.

    ``connect`` opens the connection commits use (at the first; used under the lock, from
    the thread or a caller of :meth:`commit`: it must allow any thread).
    Every method is thread-safe; a commit runs with the lock held, so :meth:`drop` returns
    only once a commit under way has ended (a release then deletes what it wrote)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 delay: float = CLAIM_DELAY_S) -> None:  # fmt: skip
        self.connect = connect
        self.delay = delay
        self._cond = threading.Condition()
        self._pending: dict[str, str] = {}  # message id → when it was claimed
        self._due: float | None = None  # monotonic deadline of the oldest pending claim
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._threadless = False  # a thread could not be started: claims go at once
        self._closed = False

    def add(self, ids: Iterable[str], when: str) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("claims after close")
            for i in ids:
                self._pending.setdefault(i, when)
            if self._due is None and self._pending:
                self._due = time.monotonic() + self.delay
            if self._thread is None and not self._threadless:
                thread = threading.Thread(target=self._run, name="claims", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # no thread to be had (a task limit reached)
                    self._threadless = True
                    logger.warning("claims are committed at once: no thread for them (%s)", exc)
                else:
                    self._thread = thread
            if self._threadless:
                self._commit_locked()  # nothing would commit them when due
            self._cond.notify()

    def drop(self, ids: Iterable[str]) -> None:
        """The turn of ``ids`` ended (acks committed) or was released: no claim for them."""
        with self._cond:
            for i in ids:
                self._pending.pop(i, None)
            if not self._pending:
                self._due = None

    def pending(self) -> set[str]:
        with self._cond:
            return set(self._pending)

    def items(self) -> list[tuple[str, str]]:
        """The pending claims, (message id, when), for a write of the turn to carry (never
        call it with a transaction open: the thread may be waiting for that lock)."""
        with self._cond:
            return list(self._pending.items())

    @staticmethod
    def write(conn: sqlite3.Connection, items: list[tuple[str, str]]) -> None:
        """Write ``items`` (from :meth:`items`) into ``conn``'s open transaction."""
        conn.executemany(_INSERT, items)

    def commit(self) -> None:
        """Commit every pending claim now (what the thread does when they are due)."""
        with self._cond:
            self._commit_locked()

    def close(self) -> None:
        """Commit what is pending (the thread does, at once), end the thread, close its
        connection."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        elif self._pending:
            self.commit()  # (no thread was ever started: nothing else would)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        with self._cond:
            while True:
                if self._due is None:
                    if self._closed:
                        break
                    self._cond.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0 and not self._closed:
                    self._cond.wait(left)
                    continue
                self._commit_locked()
                if self._closed and self._pending:
                    break  # the last try failed: nothing more can be done
            if self._pending:
                logger.error("claims of %s not committed", sorted(self._pending))

    def _commit_locked(self) -> None:
        if not self._pending:
            self._due = None
            return
        rows = list(self._pending.items())
        try:
            if self._conn is None:
                self._conn = self.connect()
            conn = self._conn
            with transaction(conn):
                self.write(conn, rows)
        except sqlite3.Error as exc:  # a full disk: kept, tried again later
            logger.warning("claims of %d message(s) not committed yet: %s", len(rows), exc)
            self._due = time.monotonic() + RETRY_S
            return
        self._pending.clear()
        self._due = None
