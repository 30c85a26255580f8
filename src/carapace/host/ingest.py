"""Routed rows: acknowledged once durable in the ingest journal (a stream) or in the
session's file (a lone row), written into ``inbound.db``.

:class:`Ingest` is the router's way in (``SessionManager.accept``). A row of a stream is
appended to the journal (host/ingest_journal.py); once that commit is durable the sender
may hear "stored". Each session then has one pump task that writes its rows, in the order
they were acknowledged, into the session's ``inbound.db`` (``SessionManager.write_batch``:
the rows waiting together share one durable commit on the session's writer thread) and
removes them from the journal after that commit. The router hears each row's outcome
through its callback: the seq (a wake for a runner), None (the id was there already: a
redelivered event), or the error that refused the row for good (the sender is told).

* A lone row (its session idle: no pump, nothing queued, no earlier row of it still
  waiting for its journal commit, whose place in the queue it would take; and no row of
  it for :data:`LONE_GAP_S`, or a reply to its last row sent since: a conversation, where
  the next message comes after the answer to the last, however quickly, not a stream)
  is handed to a new pump at once and not journaled: one
  durable commit of the session's file, and :meth:`Ingest.accept` returns once it is
  durable. That is the common case (a message, then a reply): no journal row to write,
  sync and remove beside the commit the runner waits for (issue 19). Should that commit
  fail in passing, or take longer than :data:`LONE_WAIT_S` (a lock held, a busy disk),
  the row is journaled then, and the sender acknowledged by whichever commit is durable
  first; a row that neither took (both failed) is dropped from the queue, and its sender
  hears the error (not acknowledged: the platform sends it again), so no copy is written
  later.
* Rows that come within :data:`LONE_GAP_S` of each other are a stream (a channel handing
  over events one at a time, each acknowledged before the next): one durable file commit
  per row would bound it, so they are journaled. When rows came while a commit ran, the
  pump waits until :data:`LINGER_S` after that commit began, so the rows of the next 10 ms
  share one commit (four syncs) instead of one commit each: the journal takes the
  stream's durability, the session's file only its visibility to the runner.
* A row the session's file refuses for good (an integrity error, a corrupt file) is
  removed from the journal and reported; retrying it would hold up the session's later
  rows.
* A passing failure (a full disk, a lock held too long) keeps the row in the journal and
  at the head of the session's queue: the pump tries again after a back-off (0.5 s,
  doubling to 5 s) or as soon as another row of the session comes, with the rows that
  came meanwhile behind it (a commit that fails fails for all its rows, so they keep their
  order). The first row held back tells its sender once (the router's ``delayed``: the
  message is kept, no need to send it again). At the host's stop a pump that waits stops;
  its rows are written at the next start, before any channel or runner
  (:meth:`Ingest.replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from carapace.db.sessions import Session
from carapace.errors import StoreError
from carapace.host.ingest_journal import IngestJournal, JournalClosed
from carapace.timefmt import iso

if TYPE_CHECKING:
    from carapace.host.sessions import SessionManager

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
BATCH_MAX = 256  # rows of one session in one commit
LINGER_S = 0.010  # under a stream, a session's rows are written at most this often
RETRY_MAX_S = 5.0
LONE_GAP_S = 0.005  # a row is lone when its session had none for this long (else: a stream)
LONE_WAIT_S = 0.020  # a lone row's file commit longer than this: it is journaled as well
RECENT_KEPT = 4096  # sessions whose last row time is kept (cleared when full)
# rows of one session held in memory while they wait; the rest of a longer queue (a file
# its agent keeps locked, a full disk) wait in the journal only and are read back, a batch
# (BATCH_MAX) at a time, when the pump gets to them: at most this + BATCH_MAX in memory
QUEUED_IN_MEMORY = 1024

# the outcome of one row: (seq or None for a duplicate, None) or (None, the refusal)
Outcome = Callable[[int | None, BaseException | None], Awaitable[None]]
# told once when a passing failure holds the row back (the sender may hear it is kept)
Delayed = Callable[[BaseException], Awaitable[None]]


@dataclass(eq=False)
class _Queued:
    n: int | None  # the journal's row number (None: its journal commit still runs)
    row: dict[str, Any] | None  # None: left in the journal (a long queue), read back later
    now: datetime
    outcome: Outcome | None
    delayed: Delayed | None = None
    journaling: asyncio.Future[int] | None = None  # its journal commit (None: not journaled)
    fate: asyncio.Future[None] | None = None  # set when the row leaves the queue
    late: asyncio.Future[None] | None = None  # a lone row's: set once it is journaled after all
    done: bool = False  # written (or refused for good): leaves the journal once numbered


class Ingest:
    def __init__(self, sessions: SessionManager, journal: IngestJournal) -> None:
        self.sessions = sessions
        self.journal = journal
        self.retry_first_s = RETRY_FIRST_S
        self.linger_s = LINGER_S
        self.lone_gap_s = LONE_GAP_S
        self.lone_wait_s = LONE_WAIT_S
        self.queued_in_memory = QUEUED_IN_MEMORY
        self._recent: dict[str, float] = {}  # per session: when its last row came (monotonic)
        self._last_id: dict[str, str] = {}  # per session: the id of its last row (as _recent)
        self._answered: set[str] = set()  # sessions whose last row a reply answered since
        self.monotonic = time.monotonic  # (tests set the time)
        self._queues: dict[str, list[_Queued]] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        # per session whose pump waits out a failure: set by a new row or the stop
        self._kicks: dict[str, asyncio.Event] = {}
        self._tried: dict[str, asyncio.Event] = {}  # set after a pump's next try (replay)
        self._changed: asyncio.Event | None = None  # set when a pump begins a back-off
        self._failing: set[str] = set()  # sessions whose pump waits out a failure now
        # per session, accepts waiting for their journal commit before they join the queue:
        # a row that comes meanwhile joins behind them (the queue keeps arrival order)
        self._journaling: dict[str, int] = {}
        self._posting: set[asyncio.Future[int]] = set()  # posted rows' journal commits
        self._posted: set[str] = set()  # sessions posted to (for settle(posted=True))
        # told when a posted row is in its file: (session id, whether a runner acts on it
        # now); the host wakes the session or has the sweep index its time
        self.on_landed: Callable[[str, bool], None] | None = None

    def writing(self, session_id: str) -> bool:
        """Whether rows of the session are on their way into its file now (a pump runs,
        rows wait in its queue or for their journal commit)."""
        return (session_id in self._pumps or bool(self._queues.get(session_id))
                or bool(self._journaling.get(session_id)))  # fmt: skip

    def answered(self, session_id: str, ids: Iterable[object]) -> None:
        """A reply answering the rows ``ids`` of the session was sent: when its last row is
        one of them, the session's next row is a new turn of a conversation, written as a
        lone row however soon it comes (a stream's rows come before their answers)."""
        last = self._last_id.get(session_id)
        if last is not None and last in ids:
            self._answered.add(session_id)

    async def accept(
        self, session: Session, row: dict[str, Any], *, now: datetime,
        outcome: Outcome | None = None, delayed: Delayed | None = None,
    ) -> None:  # fmt: skip
        """Return once ``row`` is durable: in the journal (a stream), or in the session's
        file (a lone row; in the journal instead if that is first, when the file's commit
        fails in passing or takes longer than ``lone_wait_s``). An error: stored in
        neither, the sender is not acknowledged. Its outcome in the file is reported
        through ``outcome``."""
        row = self.sessions.prepare_row(session, row, now)
        sid = session.id
        came = self.monotonic()
        last = self._recent.get(sid)
        if last is None and len(self._recent) >= RECENT_KEPT:
            self._recent.clear()
            self._last_id.clear()
            self._answered.clear()
        self._recent[sid] = came
        answered = sid in self._answered  # the last row's reply went out: not a stream
        self._answered.discard(sid)
        self._last_id[sid] = str(row.get("id"))
        if (sid in self._pumps or self._journaling.get(sid) or self._stopping
                or (last is not None and came - last < self.lone_gap_s and not answered)):  # fmt: skip
            # a stream (or a failure): the rows reach the file after their journal commit,
            # in its order, the ones that wait together sharing one commit each way
            journaled = self.journal.submit(sid, row)
            self._journaling[sid] = self._journaling.get(sid, 0) + 1
            try:
                n = await journaled
            finally:
                if (left := self._journaling[sid] - 1) > 0:
                    self._journaling[sid] = left
                else:
                    del self._journaling[sid]
            self._enqueue(session, _Queued(n, row, now, outcome, delayed))
            return
        # a lone row (the common case: one message, then a reply): written into the file at
        # once, one durable commit and no journal row to write and remove; the runner sees
        # it as soon as that commit ends
        loop = asyncio.get_running_loop()
        fate: asyncio.Future[None] = loop.create_future()
        late: asyncio.Future[None] = loop.create_future()
        q = _Queued(None, row, now, outcome, delayed, fate=fate, late=late)
        self._enqueue(session, q)
        waits: list[asyncio.Future[None]] = [fate, late]  # (late: its write failed in passing)
        await asyncio.wait(waits, timeout=self.lone_wait_s, return_when=asyncio.FIRST_COMPLETED)
        if not fate.done():  # a slow file (a lock held, a busy disk): journaled as well,
            journaled = self._journal_late(sid, q)  # acknowledged by whichever is first
            either: list[asyncio.Future[Any]] = [journaled, fate]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not fate.done() and journaled.exception() is None:
                return
        await fate  # in the file; or in neither: the error is raised

    def post(self, session: Session, row: dict[str, Any], *, now: datetime,
             due: str | None = None) -> None:  # fmt: skip
        """Store a row the host writes itself (a note to the agent, another agent's
        message, a task, an answer): journaled at once, then written into the session's
        file by its pump, as a stream's rows are. It never waits, so it may be called on
        the event loop: the file's agent may keep it locked for as long as it likes (a
        commit waiting there stalled every chat). Durable once the journal's commit ends,
        a fraction of a millisecond later; the pump indexes the session's work when it
        writes the row (``due`` applies to a direct write), and :attr:`on_landed` is told
        (the caller's wake came before the row was there: a runner that ended meanwhile
        would not look again). Written directly off the event loop, once the host's stop
        began, or when the journal fails."""
        row = self.sessions.prepare_row(session, row, now)
        sid = session.id
        journaled = None
        try:
            asyncio.get_running_loop()  # (none: a thread, a synchronous test)
            if not self._stopping:
                journaled = self.journal.submit(sid, row)
        except (RuntimeError, JournalClosed):
            pass
        if journaled is None:
            self.sessions.write_prepared(session, row, now=now, due=due)
            return
        self._journaling[sid] = self._journaling.get(sid, 0) + 1
        self._posting.add(journaled)
        if len(self._posted) >= RECENT_KEPT:
            self._posted.clear()
        self._posted.add(sid)
        acts = bool(row.get("trigger", 1)) and (due is None or due <= iso(now))

        async def landed(seq: int | None, exc: BaseException | None) -> None:
            if seq is not None and self.on_landed is not None:
                self.on_landed(sid, acts)

        def enqueue(fut: asyncio.Future[int]) -> None:
            self._posting.discard(fut)
            if (left := self._journaling.get(sid, 1) - 1) > 0:
                self._journaling[sid] = left
            else:
                self._journaling.pop(sid, None)
            exc = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or exc is not None:  # the journal failed (a full disk)
                try:
                    self.sessions.write_prepared(session, row, now=now, due=due)
                except (sqlite3.Error, OSError, StoreError) as again:
                    logger.error("message %s for session %s not stored: %s; %s",
                                 row.get("id"), sid, exc or "cancelled", again)  # fmt: skip
                return
            self._enqueue(session, _Queued(fut.result(), row, now, landed))

        journaled.add_done_callback(enqueue)

    def _journal_late(self, sid: str, q: _Queued) -> asyncio.Future[int]:
        """Journal a lone row after all (its write is slow, or failed in passing); once."""
        if q.journaling is None:
            try:
                assert q.row is not None  # (a lone row: never left in the journal)
                q.journaling = self.journal.submit(sid, q.row)
            except JournalClosed as exc:  # (the host stops): the sender hears it
                q.journaling = asyncio.get_running_loop().create_future()
                q.journaling.set_exception(exc)
            q.journaling.add_done_callback(functools.partial(self._journaled, q))
            if q.late is not None and not q.late.done():
                q.late.set_result(None)
        return q.journaling

    def _journaled(self, q: _Queued, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the pump decides: the row is in the file, or its sender hears it is not
        q.n = fut.result()
        if q.done:  # written before its journal commit ended
            self.journal.remove([q.n])

    def _enqueue(self, session: Session, item: _Queued) -> None:
        queue = self._queues.setdefault(session.id, [])
        queue.append(item)
        if len(queue) > self.queued_in_memory and item.n is not None:
            item.row = None  # in the journal: read back when its turn comes
        kick = self._kicks.get(session.id)
        if kick is not None:  # its pump waits out a failure: a new row is a new try
            kick.set()
            self._failing.discard(session.id)
        if session.id not in self._pumps and not self._stopping:
            self._pumps[session.id] = asyncio.get_running_loop().create_task(
                self._pump(session), name=f"ingest-{session.id}"
            )

    async def settle(
        self, session_ids: list[str] | None = None, *, through_failures: bool = True,
        posted: bool = False,
    ) -> None:  # fmt: skip
        """Wait until the rows accepted so far (of these sessions; ``posted``: and of every
        session the host posted rows to since its last such wait) are written. A session
        whose file fails (its pump waits out a back-off; its rows stay journaled) is not
        waited for, unless ``through_failures=False``: then only its success ends the wait."""
        wanted = None if session_ids is None else set(session_ids)
        while True:
            if self._posting:  # posted rows join their queues once journaled
                await asyncio.wait(list(self._posting))
                await asyncio.sleep(0)  # (their callbacks have run)
                continue
            if posted and wanted is not None:
                wanted |= self._posted
                self._posted.clear()
            pumps = [
                t for sid, t in self._pumps.items()
                if (wanted is None or sid in wanted)
                and not (through_failures and sid in self._failing)
            ]  # fmt: skip
            if not pumps:
                return
            if self._changed is None:  # shared by every waiter: set once, then replaced
                self._changed = asyncio.Event()
            changed = self._changed  # set when a pump begins to wait out a failure
            waiter = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait([*pumps, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def stop(self) -> None:
        """The host stops: write what is queued; a pump waiting out a failure ends (its
        rows stay journaled for the next start); then the journal's removals are committed."""
        self._stopping = True
        for kick in self._kicks.values():
            kick.set()
        await self.settle(through_failures=False)  # (each kicked pump ends at its next try)
        with contextlib.suppress(Exception):
            await self.journal.drain()

    async def replay(self, now: datetime) -> int:
        """At start: write every journaled row into its session's file (the host died
        before it was). Returns how many rows the journal held. The rows are queued by
        number only; each pump reads its own back a batch at a time (a journal that grew
        long is never loaded whole)."""
        self._stopping = False  # (a host started again after a stop)
        self._queues.clear()  # the journal holds every row not written
        try:
            rows = await asyncio.to_thread(self.journal.pending_index)
        except sqlite3.DatabaseError as exc:  # not a journal any more: set aside, not fatal
            aside = await asyncio.to_thread(self.journal.set_aside)
            logger.error("ingest journal %s cannot be read (%s): moved to %s; messages "
                         "acknowledged but not yet written before the last stop are in it",
                         self.journal.path, exc, aside)  # fmt: skip
            rows = []
        gone: list[int] = []
        sessions: dict[str, Session | None] = {}
        for n, sid in rows:
            if sid not in sessions:
                sessions[sid] = self.sessions.get(sid)
            session = sessions[sid]
            if session is None:
                logger.error("journaled message number %d: session %s no longer exists; "
                             "dropped", n, sid)  # fmt: skip
                gone.append(n)
                continue
            self._enqueue(session, _Queued(n, None, now, None))
        self.journal.remove(gone)
        if rows:
            logger.warning("%d journaled message(s) written after a restart", len(rows) - len(gone))
        # each session's pump has tried once (written, or waiting out a failure in the
        # background: a full disk must not keep the host from starting)
        tried = {sid: asyncio.Event() for sid in self._pumps}
        self._tried.update(tried)
        try:
            await asyncio.gather(*(e.wait() for e in tried.values()))
        finally:
            for sid in tried:
                self._tried.pop(sid, None)
        return len(rows)

    async def _pump(self, session: Session) -> None:
        sid = session.id
        delay = self.retry_first_s
        told = False  # the sender heard of this failure (once per failure, not per try)
        try:
            while queued := self._queues.get(sid):
                self._failing.discard(sid)  # trying (again)
                if (kick := self._kicks.get(sid)) is not None:
                    kick.clear()  # a row that comes from now on wakes a back-off at once
                batch = queued[:BATCH_MAX]
                started = time.monotonic()
                results: list[Any]
                try:
                    if any(q.row is None for q in batch):
                        batch = await self._read_back(sid, queued, batch)
                        if not batch:
                            continue
                except Exception as exc:  # a journal that cannot be read now: a passing
                    results = [OSError(f"reading the journal back: {exc}")] * len(batch)
                else:
                    try:
                        results = await self.sessions.write_batch(
                            session,
                            [q.row for q in batch if q.row is not None],
                            batch[-1].now,
                        )  # (every row of the batch was read back above)
                    except Exception as exc:  # the whole commit failed: every row hears it
                        results = [exc] * len(batch)
                if (tried := self._tried.get(sid)) is not None:
                    tried.set()
                done = [not _passing(res) for res in results]
                # a row held back must be in the journal: a lone row is journaled now, and
                # the journal commits that ran beside this one are waited for; a row the
                # journal refused too is in neither (its sender hears so: not acknowledged)
                for q, d in zip(batch, done, strict=True):
                    if not d and q.n is None:
                        self._journal_late(sid, q)
                running = [q.journaling for q, d in zip(batch, done, strict=True)
                           if not d and q.n is None and q.journaling is not None]  # fmt: skip
                if running:
                    await asyncio.wait(running)
                    for q, d in zip(batch, done, strict=True):
                        if not d and q.n is None:
                            _take_number(q)  # (its callback may not have run yet)
                unstored = [q for q, d in zip(batch, done, strict=True) if not d and q.n is None]
                kept = [q for q, d in zip(batch, done, strict=True) if not d and q.n is not None]
                queued[: len(batch)] = kept  # rows queued meanwhile stay behind them
                written = [q for q, d in zip(batch, done, strict=True) if d]
                for q in written:
                    q.done = True
                self.journal.remove(q.n for q in written if q.n is not None)
                for q, res, d in zip(batch, results, done, strict=True):
                    if d:
                        await self._tell(q, res)
                        _settle(q, None)
                for q in unstored:
                    assert q.journaling is not None
                    _settle(q, q.journaling.exception())
                if kept:
                    failed = cast(BaseException, next(r for r in results if _passing(r)))
                    if self._stopping:
                        logger.warning("session %s: %d message(s) stay journaled for the next "
                                       "start (%s)", sid, len(queued), failed)  # fmt: skip
                        return
                    # once per failure (a full disk also fails the log's own writes)
                    log = logger.debug if told else logger.warning
                    log("session %s: writing %d message(s) failed (%s); again in %.1f s or "
                        "at its next message", sid, len(kept), failed, delay)  # fmt: skip
                    if not told:
                        told = True
                        if kept[0].delayed is not None:
                            with contextlib.suppress(Exception):
                                await kept[0].delayed(failed)
                    kick = self._kicks.setdefault(sid, asyncio.Event())
                    self._failing.add(sid)
                    changed, self._changed = self._changed, None
                    if changed is not None:
                        changed.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kick.wait(), delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                else:
                    if told:
                        logger.warning("session %s: messages written again", sid)
                    delay, told = self.retry_first_s, False
                    # rows came during the commit (a stream): the ones that follow within
                    # the linger share the next commit; a lone row never waits
                    left = self.linger_s - (time.monotonic() - started)
                    if queued and left > 0:
                        await asyncio.sleep(left)
        finally:
            self._failing.discard(sid)
            if (tried := self._tried.get(sid)) is not None:
                tried.set()  # (ended without a try: cancelled)
            self._kicks.pop(sid, None)
            self._pumps.pop(sid, None)
            for q in self._queues.get(sid, ()):  # (cancelled): a sender still waiting hears
                if q.fate is None or q.fate.done():
                    continue
                if q.journaling is not None:
                    q.journaling.add_done_callback(functools.partial(_unwritten, q))
                else:  # a lone row never journaled: stored nowhere
                    _settle(q, JournalClosed("the host stopped before the message was stored"))
            if not self._queues.get(sid):
                self._queues.pop(sid, None)

    async def _read_back(self, sid: str, queued: list[_Queued], batch: list[_Queued]
                         ) -> list[_Queued]:  # fmt: skip
        """The rows of ``batch`` left in the journal, read back (off the loop). One the
        journal no longer holds (removed by hand, a row that does not decode) cannot be
        written: it leaves the queue, logged."""
        wanted = [q.n for q in batch if q.row is None and q.n is not None]
        found = await asyncio.to_thread(self.journal.rows, wanted)
        lost = []
        for q in batch:
            if q.row is None:
                q.row = found.get(q.n) if q.n is not None else None
                if q.row is None:
                    lost.append(q)
        if lost:
            logger.error("session %s: %d journaled message(s) could not be read back from "
                         "the journal (numbers %s); not written", sid, len(lost),
                         [q.n for q in lost][:20])  # fmt: skip
            for q in lost:
                queued.remove(q)
                q.done = True
            self.journal.remove(q.n for q in lost if q.n is not None)
        return [q for q in batch if q.row is not None]

    async def _tell(self, q: _Queued, res: int | BaseException | None) -> None:
        if isinstance(res, BaseException):
            logger.error("message %s not stored: %s", (q.row or {}).get("id"), res)
        if q.outcome is None:
            return
        try:
            if isinstance(res, BaseException):
                await q.outcome(None, res)
            else:
                await q.outcome(res, None)
        except Exception:  # the router's reaction failed; the row is written either way
            logger.exception("outcome of message %s", (q.row or {}).get("id"))


# the file refuses the row for good: retrying would hold up the session's later rows
Refusal = (StoreError, sqlite3.IntegrityError, sqlite3.DatabaseError)


def _take_number(q: _Queued) -> None:
    """``q.n`` from the journal commit that ran beside the row's write, when it holds it."""
    fut = q.journaling
    if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
        q.n = fut.result()


def _unwritten(q: _Queued, fut: asyncio.Future[int]) -> None:
    """The pump ended before writing ``q``: its sender, waiting for whichever commit is
    durable first, hears the journal's error if that one failed too."""
    if not fut.cancelled() and fut.exception() is not None:
        _settle(q, fut.exception())


def _settle(q: _Queued, exc: BaseException | None) -> None:
    if q.fate is None or q.fate.done():
        return
    if exc is None:
        q.fate.set_result(None)
    else:
        q.fate.set_exception(exc)


def _passing(res: object) -> bool:
    """A failure worth another try (a full disk, a lock held too long, the writers closed
    at a stop), as opposed to a seq, a duplicate (None) or a refusal for good."""
    if isinstance(res, sqlite3.OperationalError):
        return True
    return isinstance(res, BaseException) and not isinstance(res, Refusal)
