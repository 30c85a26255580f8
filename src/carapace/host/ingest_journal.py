"""The ingest journal (issue 19): a routed message of a stream is durable once it is a row
here (a lone message goes straight into its session's file: host/ingest.py).

A durable commit of a session's ``inbound.db`` costs four fsyncs (a rollback journal,
docs/compat.md D8), about 1 ms on this project's machines; a channel that hands the router
one event at a time and waits for each was bound by it (~700 msg/s). The journal is one
host-private SQLite file, ``data/ingest.db``, in WAL mode with ``synchronous=FULL``: a
commit appends to the ``-wal`` and syncs it once (~0.3 ms).

* The router acknowledges a message once its row is committed here (:meth:`submit`; rows
  that wait together share one commit).
* The session manager then writes the row into the session's ``inbound.db`` on the
  session's writer thread, in one durable commit with the rows that wait with it, and only
  after that commit is durable removes it here (:meth:`remove`, a commit without a sync: a
  removal lost to a power cut only means the row is written again, and skipped, at start).
* A crash in between loses nothing: at start, before any channel or runner, the host
  writes every row still here into its session's ``inbound.db`` (a row whose id is there
  already is skipped) and removes it (``Ingest.replay``).

The file is in the host's data folder, never in a session folder: no agent can reach it.
After a clean stop it holds no rows (the host applies every one before it stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from carapace.host.thread_answer import answer

logger = logging.getLogger(__name__)

BATCH_MAX = 256  # appends that share one commit
IDLE_COMMIT_S = 0.5  # removals wait this long for an append to ride on, then go alone
DELS_MAX = 4096  # removals that go alone at once

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pending ("
    " n INTEGER PRIMARY KEY,"  # the order rows were acknowledged in
    " session_id TEXT NOT NULL,"
    " row TEXT NOT NULL)"  # the messages_in row, as JSON, ready to insert
)

# a job: ("add", session id, row JSON, loop, future) | ("del", n list) | ("sync", loop, fut)
_Job = tuple[Any, ...]


class JournalClosed(RuntimeError):
    """A submit after :meth:`IngestJournal.close`."""


def open_journal(path: Path) -> sqlite3.Connection:
    """Open (or create, mode 0600) the journal file; never through a link.

    An existing file is looked at (``lstat``), never opened by hand: closing a descriptor
    of a file drops every POSIX lock this process holds on it, SQLite's own included
    (tests/security/test_raw_db_opens.py)."""
    try:
        os.mknod(path, stat.S_IFREG | 0o600)  # made, not opened; never through a link
    except FileExistsError:
        pass
    except OSError as exc:  # a file system without mknod: made by an exclusive open
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        with contextlib.suppress(FileExistsError):  # (a new file: no connection has it)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600))  # fmt: skip
    if not stat.S_ISREG(os.lstat(path).st_mode):  # (O_EXCL and mknod never follow a link)
        raise OSError(errno.ELOOP, "not a regular file (a link?)", str(path))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(_SCHEMA)
    return conn


class IngestJournal:
    """``data/ingest.db`` and the one thread that writes it (started at first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._opening = threading.Lock()
        self._closed = False
        self._synced = True  # the connection's synchronous mode is FULL (open_journal)
        self._failing: str | None = None  # the error of the last commit, while they fail

    # ------------------------------------------------------------------ at start
    def pending(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Every row not yet removed, oldest first, whole (blocking: call it off the loop;
        the start reads :meth:`pending_index` instead). A row that does not decode is
        logged and removed (nothing could write it)."""
        index = self.pending_index()
        found = self.rows([n for n, _sid in index])
        bad = [n for n, _sid in index if n not in found]
        for n in bad:
            logger.error("ingest journal row %d does not decode; removed", n)
        if bad:
            self.remove(bad)
        return [(n, sid, found[n]) for n, sid in index if n in found]

    def pending_index(self) -> list[tuple[int, str]]:
        """``(number, session id)`` of every row not yet removed, oldest first, without
        the rows themselves (blocking: call it off the loop): the start queues them and
        the pumps read them back a batch at a time (:meth:`rows`), so a journal that grew
        long (a session's file locked for hours) is not loaded whole into memory."""
        conn = self._connection()
        with self._lock:
            got = conn.execute("SELECT n, session_id FROM pending ORDER BY n").fetchall()
        return [(int(n), str(sid)) for n, sid in got]

    def rows(self, ns: list[int]) -> dict[int, dict[str, Any]]:
        """The rows numbered ``ns`` still journaled (blocking: call it off the loop): the
        ingest keeps a long queue's rows here rather than in memory (``Ingest``). A row
        that does not decode is left out (nothing could write it)."""
        conn = self._connection()
        out: dict[int, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(ns), 500):  # (SQLite's bound on parameters)
                part = ns[i : i + 500]
                marks = ",".join("?" * len(part))
                for n, text in conn.execute(
                    f"SELECT n, row FROM pending WHERE n IN ({marks})", part
                ).fetchall():
                    with contextlib.suppress(ValueError):
                        row = json.loads(text)
                        if isinstance(row, dict) and isinstance(row.get("id"), str):
                            out[int(n)] = row
        return out

    def set_aside(self) -> Path:
        """Move an unreadable journal (and its ``-wal``/``-shm``) out of the way, to
        ``ingest.db.unreadable-<n>``, so the host starts with a new one; returns the new
        name. Only before the journal's thread has started (at start)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        n = 1
        while os.path.lexists(f"{self.path}.unreadable-{n}"):
            n += 1
        target = Path(f"{self.path}.unreadable-{n}")
        for suffix in ("", "-wal", "-shm"):
            if os.path.lexists(f"{self.path}{suffix}"):
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
        return target

    # ------------------------------------------------------------------ on the loop
    def submit(self, session_id: str, row: dict[str, Any]) -> asyncio.Future[int]:
        """Commit ``row`` for ``session_id``, queued now (in call order); the future holds
        its number once the commit is durable, or the error (a full disk: the message is
        not acknowledged)."""
        text = json.dumps(row, separators=(",", ":"), ensure_ascii=False)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._put(("add", session_id, text, loop, fut))
        return fut

    def remove(self, ns: Iterable[int]) -> None:
        """Forget rows written durably into their sessions' files (queued; committed with
        the next append, or alone, without a sync, once the journal is idle for a moment)."""
        ns = list(ns)
        if ns and not self._closed:
            self._put(("del", ns))

    async def drain(self) -> None:
        """Wait until every job submitted so far has run (removals committed)."""
        if self._thread is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._jobs.put(("sync", loop, fut))
        await fut

    def close(self) -> None:
        """Run what is queued, then end the thread and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _put(self, job: _Job) -> None:
        if self._closed:
            raise JournalClosed("the ingest journal is closed")
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._connection()
                    self._thread = threading.Thread(
                        target=self._run, name="carapace-ingest", daemon=True
                    )
                    self._thread.start()
        self._jobs.put(job)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            with self._opening:  # (the start's reads and the thread may both come first)
                if self._conn is None:
                    self._conn = open_journal(self.path)
        return self._conn

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        dels: list[int] = []  # removals not yet committed (they ride on the next commit)
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_COMMIT_S if dels else None)
            except queue.Empty:  # idle: commit the removals on their own
                self._run_batch([], dels)
                continue
            if job is None:
                self._run_batch([], dels)
                return
            batch = [job]
            while len(batch) < BATCH_MAX:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)  # the end, after this batch
                    break
                batch.append(nxt)
            dels += [n for j in batch if j[0] == "del" for n in j[1]]
            adds = [j for j in batch if j[0] == "add"]
            if adds or any(j[0] == "sync" for j in batch) or len(dels) >= DELS_MAX:
                self._run_batch(batch, dels)

    def _run_batch(self, batch: list[_Job], dels: list[int]) -> None:
        """One commit: the batch's appends (synced) with every removal waiting (a removal
        alone is committed without a sync), then the answers. ``dels`` is emptied once
        committed; kept for the next commit when this one fails."""
        adds = [j for j in batch if j[0] == "add"]
        answers: list[tuple[Any, Any, bool, Any]] = []
        if adds or dels:
            conn = self._connection()
            try:
                with self._lock:
                    synced = bool(adds)
                    if synced != self._synced:  # (a pragma costs: set only when it changes)
                        conn.execute(f"PRAGMA synchronous = {'FULL' if synced else 'NORMAL'}")
                        self._synced = synced
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        if dels:
                            conn.executemany("DELETE FROM pending WHERE n=?", [(n,) for n in dels])
                        if adds:  # numbered here: one call for the batch
                            top = conn.execute("SELECT COALESCE(MAX(n), 0) FROM pending")
                            base = int(top.fetchone()[0]) + 1
                            conn.executemany(
                                "INSERT INTO pending (n, session_id, row) VALUES (?, ?, ?)",
                                [(base + i, j[1], j[2]) for i, j in enumerate(adds)],
                            )
                            answers += [(j[3], j[4], True, base + i) for i, j in enumerate(adds)]
                        conn.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                        raise
                dels.clear()
                if self._failing:
                    self._failing = None
                    logger.warning("ingest journal: commits work again")
            except Exception as exc:  # nothing committed: every sender hears it
                if str(exc) != self._failing:  # once per failure, not per commit (a full
                    self._failing = str(exc)  # disk also fails the log's own writes)
                    logger.error("ingest journal: commit failed: %s", exc)
                answers = [(loop, fut, False, exc) for _k, _s, _t, loop, fut in adds]
        for j in batch:
            if j[0] == "sync":
                answers.append((j[1], j[2], True, None))
        for loop, fut, ok, value in answers:
            answer(loop, fut, ok, value)
