"""Session-DB writes off the event loop (issue 19): a few writer threads, one per session.

A durable commit to a session's ``inbound.db`` costs a millisecond or more (fsyncs), and
when many runners commit at once their reactions used to run in one pass of the event
loop: 100 chats stalled it for ~200 ms. Here the host's grouped inbound writes (router)
and delivery's outcome commits run in a small pool of threads:

* Every session is served by one thread (``hash(session id) % threads``), jobs run in the
  order they were submitted, so one session's writes keep their order.
* Each thread has its own connection per session (SQLite connections stay on the thread
  that opened them); at most :data:`CONNS_PER_THREAD` are kept open (least recently used
  closed first), a session's is closed by :meth:`SessionWriters.forget` (its runner ended)
  and reopened when the file was replaced (a session folder deleted and made again).
* A file's identity is its *key*: (inode number, generation). The generation counts the
  times the host made the session's folder again (:meth:`SessionWriters.replaced`); the
  inode number alone is not enough, a freed one comes back for the new file. A job may
  name the key it was meant for (``expect``): run on another file it raises
  :class:`FolderReplaced` and touches nothing (a delivery pass that read the old file
  never writes its cursor into the new one).
* The event loop awaits a future; it is resolved only after the job returned, so a
  durable commit is durable before its caller (and the sender) hears of it, and an error
  (a full disk) reaches the caller, who acknowledges nothing.
* :meth:`SessionWriters.drain` waits for every job submitted before it; the host calls it
  on stop, and :meth:`SessionWriters.close` then ends the threads.
* A job that meets a lock for longer than :data:`WRITER_BUSY_MS` (the session's agent may
  keep a read transaction open on the file for as long as it likes) is rolled back and
  *set aside* with the session's later jobs behind it, in order; the thread serves other
  sessions and tries them again, from the start, without waiting in SQLite's busy handler
  (a commit waiting there holds PENDING, which keeps the file's other readers out). So a
  job's function may run more than once: it works in the transaction that is rolled back.
  Past ``busy_deadline_s`` (5 s, the old busy timeout) the jobs set aside fail as busy.

Callers batch: one job carries a whole group of rows (a thread hop per message would cost
more than it saves). The thread batches too: jobs of one session found waiting together
(a route's rows, delivery outcomes, ack copies) run in one transaction with one commit,
each in a savepoint of its own; callers hear their results after that commit. When SQLite
itself fails inside such a batch, it is rolled back and its jobs run one by one, each
caller hearing its own outcome.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from carapace.db.connection import BUSY_TIMEOUT_MS, is_busy, set_busy, transaction
from carapace.db.session import SessionPaths, open_inbound
from carapace.host.thread_answer import answer

logger = logging.getLogger(__name__)

T = TypeVar("T")

THREADS = 2  # writer threads (commits mostly wait on the disk; the GIL is released there)
CONNS_PER_THREAD = 64  # session connections a thread keeps open (LRU)
BATCH_MAX = 64  # jobs of one session that share a commit
# A commit waits this long in SQLite's busy handler for a reader of the file (the runner's
# reads take well under it); longer, the session's jobs are set aside and tried again
# later, so one agent keeping its file locked holds up no other session's writes.
WRITER_BUSY_MS = 10
RETRY_FIRST_S = 0.002  # the first try again of jobs set aside; doubling up to
RETRY_MAX_S = 0.1

Key = tuple[int, int]  # (inode number of inbound.db, generation of the session folder)

_Job = tuple[str, SessionPaths | None, Callable[[sqlite3.Connection], Any] | None,
             asyncio.AbstractEventLoop | None, asyncio.Future[Any] | None,
             Key | None]  # fmt: skip


class WritersClosed(RuntimeError):
    """A write submitted after :meth:`SessionWriters.close`."""


class FolderReplaced(FileNotFoundError):
    """The job's file is gone: the session folder was deleted (and maybe made again)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"inbound.db of session {session_id} was replaced")


@dataclass(eq=False)
class _Aside:
    """A session's jobs set aside: its file is locked by a reader (its agent may hold a
    read transaction open for as long as it likes)."""

    jobs: collections.deque[tuple[int, _Job]]  # (number taken, job), in order
    since: float  # when the head job first met the lock (monotonic)
    at: float  # the next try
    delay: float
    error: BaseException  # what the last try met


class _Worker:
    def __init__(self, name: str, owner: SessionWriters) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.conns: OrderedDict[str, tuple[sqlite3.Connection, Key]] = OrderedDict()
        self.owner = owner  # its generations (written on the loop, read here), deadline
        self.taken = 0  # jobs taken off the queue so far (their numbers)
        self.aside: dict[str, _Aside] = {}
        self.drains: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _conn(self, session_id: str, paths: SessionPaths, expect: Key | None) -> sqlite3.Connection:
        # FileNotFoundError: the caller hears it
        key = self.owner.key(session_id, paths)
        if expect is not None and key != expect:
            raise FolderReplaced(session_id)
        held = self.conns.get(session_id)
        if held is not None:
            if held[1] == key:
                self.conns.move_to_end(session_id)
                return held[0]
            self._drop(session_id)  # the folder was made again: the old file is gone
        conn = open_inbound(paths)
        set_busy(conn, WRITER_BUSY_MS)  # longer: set aside
        self.conns[session_id] = (conn, key)
        while len(self.conns) > CONNS_PER_THREAD:
            self._drop(next(iter(self.conns)))
        return conn

    def _drop(self, session_id: str) -> None:
        held = self.conns.pop(session_id, None)
        if held is not None:
            with contextlib.suppress(sqlite3.Error):
                held[0].close()

    def _next(self, held: collections.deque[tuple[int, _Job | None]]
              ) -> tuple[int, _Job | None] | None:  # fmt: skip
        """The next job (numbered), or None when a set-aside session is due first."""
        if held:
            return held.popleft()
        wait = None
        if self.aside:
            wait = max(0.0, min(a.at for a in self.aside.values()) - time.monotonic())
        try:
            job = self.jobs.get(timeout=wait)
        except queue.Empty:
            return None
        self.taken += 1
        return self.taken, job

    def _run(self) -> None:
        held: collections.deque[tuple[int, _Job | None]] = collections.deque()  # taken, not run
        while True:
            got = self._next(held)
            if got is not None:
                n, job = got
                if job is None:
                    break
                self._take(n, job, held)
            if self.aside:
                self._retry_due(time.monotonic())
            if self.drains:
                self._answer_drains()
        for sid in list(self.aside):  # the end: one more try each, then "busy"
            self._retry(sid, self.aside[sid], time.monotonic(), final=True)
        self._answer_drains()
        for sid in list(self.conns):
            self._drop(sid)

    def _take(self, n: int, job: _Job, held: collections.deque[tuple[int, _Job | None]]) -> None:
        session_id, paths, fn, loop, fut, _expect = job
        if paths is None and fn is None and loop is not None and fut is not None:  # drain
            self.drains.append((n, loop, fut))
            return
        aside = self.aside.get(session_id)
        if aside is not None:  # behind the session's jobs set aside, in order
            aside.jobs.append((n, job))
            return
        batch = [(n, job)]
        if fn is not None and paths is not None:  # a write job: gather its company
            while len(batch) < BATCH_MAX:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                self.taken += 1
                if nxt is not None and nxt[0] == session_id and nxt[2] is not None:
                    batch.append((self.taken, nxt))
                else:  # another session's job (or the end): after this batch, in order
                    held.append((self.taken, nxt))
                    break
        now = time.monotonic()
        left, error = self._attempt(batch)
        if left:
            assert error is not None
            self.aside[session_id] = _Aside(collections.deque(left), now,
                                            now + RETRY_FIRST_S, RETRY_FIRST_S, error)  # fmt: skip

    def _attempt(self, batch: list[tuple[int, _Job]]) -> tuple[list[tuple[int, _Job]],
                                                                BaseException | None]:  # fmt: skip
        """Run one session's jobs; those that met a reader's lock are handed back (none
        of them answered or written), with the error they met."""
        if len(batch) > 1:
            done = self._run_batch([job for _n, job in batch])
            if isinstance(done, BaseException):
                return batch, done
            if done:
                return [], None
        for i, (_n, job) in enumerate(batch):
            busy = self._run_one(job)
            if busy is not None:
                return batch[i:], busy
        return [], None

    def _retry_due(self, now: float) -> None:
        for sid, aside in list(self.aside.items()):
            if aside.at <= now:
                self._retry(sid, aside, now, final=False)

    def _retry(self, session_id: str, aside: _Aside, now: float, *, final: bool) -> None:
        """Try a set-aside session's jobs again, in order; past the deadline (or at the
        end) the ones that still meet the lock fail as busy."""
        jobs = aside.jobs
        while jobs:
            batch: list[tuple[int, _Job]] = []
            while jobs and len(batch) < BATCH_MAX:
                job = jobs[0][1]
                if job[2] is None:  # a forget: its turn
                    if batch:
                        break
                    jobs.popleft()
                    self._run_one(job)
                    continue
                batch.append(jobs.popleft())
            if not batch:
                continue
            left, error = self._attempt_now(session_id, batch)
            if not left:
                aside.since = now  # the lock is gone: what follows has its own deadline
                continue
            assert error is not None
            jobs.extendleft(reversed(left))
            aside.error = error
            if final or now - aside.since >= self.owner.busy_deadline_s:
                self._fail_all(session_id, aside)
                return
            aside.delay = min(aside.delay * 2, RETRY_MAX_S)
            aside.at = now + aside.delay
            return
        del self.aside[session_id]

    def _attempt_now(self, session_id: str, batch: list[tuple[int, _Job]]
                     ) -> tuple[list[tuple[int, _Job]], BaseException | None]:  # fmt: skip
        """:meth:`_attempt` without waiting in SQLite's busy handler: a lock that outlasted
        the first try's wait is likely held on purpose, and a commit waiting for it holds
        the PENDING lock that keeps every new reader of the file out."""
        held = self.conns.get(session_id)
        if held is None:
            return self._attempt(batch)
        conn = held[0]
        try:
            set_busy(conn, 0)
        except sqlite3.Error:
            self._drop(session_id)
            return self._attempt(batch)
        try:
            return self._attempt(batch)
        finally:
            if self.conns.get(session_id, (None,))[0] is conn:
                with contextlib.suppress(sqlite3.Error):
                    set_busy(conn, WRITER_BUSY_MS)

    def _fail_all(self, session_id: str, aside: _Aside) -> None:
        """The lock outlasted the deadline: every job set aside hears it (as a commit that
        waited out SQLite's busy timeout would have); a forget among them still runs."""
        del self.aside[session_id]
        for _n, job in aside.jobs:
            if job[2] is None:
                self._run_one(job)
            else:
                answer(job[3], job[4], False, aside.error)
        logger.warning("session %s: inbound.db stayed locked by a reader for %.1f s; %d "
                       "write(s) failed as busy", session_id, time.monotonic() - aside.since,
                       len(aside.jobs))  # fmt: skip

    def _answer_drains(self) -> None:
        low = min((a.jobs[0][0] for a in self.aside.values() if a.jobs), default=None)
        keep = []
        for n, loop, fut in self.drains:
            if low is None or n < low:
                answer(loop, fut, True, None)
            else:
                keep.append((n, loop, fut))
        self.drains = keep

    def _run_one(self, job: _Job) -> BaseException | None:
        """Run one job and answer its caller; a reader's lock met instead: not answered,
        the error returned (the job is tried again later)."""
        session_id, paths, fn, loop, fut, expect = job
        if fn is None or paths is None:  # forget
            self._drop(session_id)
            ok, value = True, None
        else:
            try:
                conn = self._conn(session_id, paths, expect)
                ok, value = True, fn(conn)
            except BaseException as exc:  # handed to the caller, raised there
                if is_busy(exc):
                    self._undo(session_id)
                    return exc
                ok, value = False, exc
                if isinstance(exc, sqlite3.Error):  # a connection in doubt: open anew
                    self._drop(session_id)
        answer(loop, fut, ok, value)
        return None

    def _undo(self, session_id: str) -> None:
        """A job met a lock: nothing of it may stay open (a transaction left waiting holds
        PENDING, which keeps the file's readers out)."""
        held = self.conns.get(session_id)
        if held is not None and held[0].in_transaction:
            try:
                held[0].execute("ROLLBACK")
            except sqlite3.Error:
                self._drop(session_id)

    def _run_batch(self, batch: list[_Job]) -> bool | BaseException:
        """Several jobs of one session queued together: one transaction, one commit (the
        router's rows, delivery outcomes and ack copies share a durable commit instead of
        one each). Each job runs in a savepoint, so one that raises leaves the others'
        writes alone; the callers hear of their results only after the commit. False
        (nothing written, nobody answered) when SQLite itself failed: the caller runs the
        jobs one by one, each hearing its own outcome as before; the error, when that was
        a reader's lock (nothing written, nobody answered: tried again later)."""
        session_id, paths = batch[0][0], batch[0][1]
        assert paths is not None
        results: list[tuple[bool, Any]] = []
        try:
            conn = self._conn(session_id, paths, None)
            key = self.conns[session_id][1]
            with transaction(conn):
                for _sid, _paths, fn, _loop, _fut, expect in batch:
                    assert fn is not None
                    if expect is not None and expect != key:
                        results.append((False, FolderReplaced(session_id)))
                        continue
                    try:
                        with transaction(conn):  # a savepoint: this job's writes alone
                            value = fn(conn)
                    except sqlite3.Error:
                        raise
                    except BaseException as exc:  # the job's own error: its savepoint undone
                        results.append((False, exc))
                    else:
                        results.append((True, value))
        except (sqlite3.Error, OSError) as exc:
            if is_busy(exc):
                self._undo(session_id)
                return exc
            self._drop(session_id)  # a connection in doubt; the jobs run one by one
            return False
        for (_sid, _paths, _fn, loop, fut, _expect), (ok, value) in zip(
            batch, results, strict=True
        ):
            answer(loop, fut, ok, value)
        return True


class SessionWriters:
    """The writer threads of one host (started at first use)."""

    def __init__(self, threads: int = THREADS) -> None:
        self.threads = max(1, threads)
        self._workers: list[_Worker] = []
        self._closed = False
        self._lock = threading.Lock()
        self._generations: dict[str, int] = {}
        # a job set aside for a reader's lock fails as busy after this long (as SQLite's
        # busy timeout did when the thread waited in it)
        self.busy_deadline_s = BUSY_TIMEOUT_MS / 1000

    def _worker(self, session_id: str) -> _Worker:
        if self._closed:
            raise WritersClosed("session writers are closed")
        if not self._workers:
            with self._lock:
                if not self._workers:
                    self._workers = [
                        _Worker(f"carapace-writer-{i}", self) for i in range(self.threads)
                    ]
        return self._workers[zlib.crc32(session_id.encode()) % len(self._workers)]

    def key(self, session_id: str, paths: SessionPaths) -> Key:
        """The identity of the session's current inbound.db (OSError when it is missing)."""
        return os.stat(paths.inbound).st_ino, self._generations.get(session_id, 0)

    def current_key(self, session_id: str, paths: SessionPaths) -> Key | None:
        """:meth:`key`, or None when the file is missing."""
        try:
            return self.key(session_id, paths)
        except OSError:
            return None

    def generation(self, session_id: str) -> int:
        return self._generations.get(session_id, 0)

    def replaced(self, session_id: str) -> None:
        """The session's folder is made again: jobs that expect the old file's key fail
        with :class:`FolderReplaced`, and the old file's connection is closed. Called on
        the event loop, before the new folder is made."""
        self._generations[session_id] = self._generations.get(session_id, 0) + 1
        self.forget(session_id)

    async def call(
        self,
        session_id: str,
        paths: SessionPaths,
        fn: Callable[[sqlite3.Connection], T],
        *,
        expect: Key | None = None,
    ) -> T:
        """Run ``fn(connection to the session's inbound.db)`` on the session's thread, after
        every job submitted for it before; its result, or its exception raised here. With
        ``expect`` (a :meth:`key`), only on that very file (else :class:`FolderReplaced`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._worker(session_id).jobs.put((session_id, paths, fn, loop, fut, expect))
        return await fut

    def forget(self, session_id: str) -> None:
        """Close the session's connection (after its pending jobs)."""
        if self._workers and not self._closed:
            self._worker(session_id).jobs.put((session_id, None, None, None, None, None))

    async def drain(self) -> None:
        """Wait until every job submitted so far has run."""
        if not self._workers or self._closed:
            return
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = []
        for w in self._workers:
            fut: asyncio.Future[Any] = loop.create_future()
            w.jobs.put(("", None, None, loop, fut, None))
            futs.append(fut)
        await asyncio.gather(*futs)

    def close(self) -> None:
        """End the threads once their queued jobs have run (they are all written), closing
        their connections."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.jobs.put(None)
        for w in self._workers:
            w.thread.join()
