"""Central-DB checkpoints off the event loop (issue 19).

The host writes the central DB (WAL) on its event loop: work marks, ``last_active``, wake
plans. SQLite checkpoints a WAL automatically in the commit that takes it past 1,000 pages,
and a checkpoint copies pages into the database and fsyncs it: several ms on an idle disk,
tens on a loaded one, inside one of those commits on the loop (``carapace bench scale``'s
sweep showed a 7-13 ms stall in a one-row ``UPDATE``). A running host turns that off on
its loop connection and checkpoints from a thread of its own instead, with a connection
of its own: a ``PASSIVE`` checkpoint never blocks the loop's readers or writers.

Its thread also tells of changes (``on_change``): after each checkpoint it reads its
connection's ``data_version``, which moves when any other connection (the loop's, another
process's) committed, and calls ``on_change`` from the thread when it moved. The card pump
is woken so (``permissions/approvals_host.py``) instead of looking every second itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from carapace.db.connection import connect

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0  # a checkpoint with nothing to copy costs a few µs
RETRY_MAX_S = 30.0  # longest pause after a failed checkpoint before the next try
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, given back to the loop connection on stop


class Checkpointer:
    def __init__(self, path: Path, loop_conn: sqlite3.Connection,
                 on_change: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.path = path
        self.loop_conn = loop_conn
        self.on_change = on_change  # called from the thread (see the module docstring)
        # its last look succeeded: a change would be told within INTERVAL_S (a failing
        # checkpointer waits up to RETRY_MAX_S between tries: its listener looks itself)
        self.telling = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take_over(self) -> threading.Thread | None:
        """The loop connection stops checkpointing; the thread that will (None: running)."""
        if self._thread is not None:
            return None
        self.loop_conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="carapace-checkpoint", daemon=True)
        return self._thread

    def start(self) -> None:
        """Take over the loop connection's checkpoints (runs until :meth:`stop`)."""
        if (thread := self._take_over()) is not None:
            thread.start()

    async def start_async(self) -> None:
        """:meth:`start` for the event loop: the thread is started from a worker (starting a
        thread waits for it to run: milliseconds on a busy machine)."""
        if (thread := self._take_over()) is not None:
            await asyncio.to_thread(thread.start)

    def _run(self) -> None:
        """Checkpoint every :data:`INTERVAL_S` until stopped. An error (the file could not
        be opened, a corrupt page) does not end the thread: the loop connection has no
        automatic checkpoints while it runs, so the WAL would grow without bound; the
        connection is opened again after a pause that doubles up to :data:`RETRY_MAX_S`."""
        conn: sqlite3.Connection | None = None
        pause = INTERVAL_S
        version: int | None = None  # the connection's data_version at the last look
        try:
            while True:
                try:
                    if conn is None:
                        conn = connect(self.path, "central")
                        version = None
                    self.checkpoint(conn)
                    pause = INTERVAL_S
                    self.telling = self.on_change is not None  # (before it tells)
                    version = self._tell_change(conn, version)
                except sqlite3.Error as exc:
                    self.telling = False
                    logger.warning("central DB checkpoint failed (tried again in %g s): %s",
                                   pause, exc)  # fmt: skip
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
                    pause = min(pause * 2, RETRY_MAX_S)
                if self._stop.wait(pause):
                    break
            if conn is not None:
                self.checkpoint(conn)
        except sqlite3.Error as exc:  # the last one: the loop connection checkpoints again
            logger.warning("central DB: the last background checkpoint failed: %s", exc)
        finally:
            self.telling = False
            if conn is not None:
                conn.close()

    def _tell_change(self, conn: sqlite3.Connection, version: int | None) -> int | None:
        """Call ``on_change`` when another connection committed since ``version`` (the
        first look after an open tells, too: a change may have come meanwhile)."""
        if self.on_change is None:
            return None
        now = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if now != version:
            try:
                self.on_change()
            except Exception:  # (the thread must go on checkpointing)
                logger.exception("central DB change: its listener failed")
        return now

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as exc:  # busy, a full disk: the next one retries
            logger.debug("central DB checkpoint: %s", exc)

    def stop(self) -> None:
        """End the thread (after one last checkpoint) and give the loop connection its
        automatic checkpoints back. On the loop connection's thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._hand_back()

    async def stop_async(self) -> None:
        """:meth:`stop` for the event loop: the last checkpoint is waited for in a worker,
        the loop connection (usable on its own thread only) is set back here."""
        if self._thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        self._hand_back()

    def _hand_back(self) -> None:
        self._thread = None
        with contextlib.suppress(sqlite3.Error):
            self.loop_conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
