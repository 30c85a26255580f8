"""Delivery: outbound rows → channel adapters, system actions, other agents (spec §4).

* Woken by the session folder's file notifications (the host watches each live session),
  so a reply leaves within milliseconds of the runner's commit (DESIGN §3).
* Reads only rows above a per-session cursor (``carapace_delivery_cursor`` in
  ``inbound.db``: every row at or below it is done) in ``seq`` order (§11.1 item 15,
  §11.4 item 35). Attempts live in ``carapace_delivery`` (inbound.db, host-owned), so they
  survive restarts (§11.3 item 27).
* Nothing is marked delivered that was not sent (§11.3 item 26): no adapter → retried with
  backoff then ``failed``; no reader connected (``ChannelUnavailable``) → kept undelivered,
  delivered when a reader comes back, ``failed`` after ``UNAVAILABLE_TTL_S``. Such a row is
  tried again on every drain (a reader's ``on_ready`` drains at once), not only after
  ``UNAVAILABLE_RETRY_S``: asking an adapter for a reader costs nothing.
* Rows after a waiting row for the same address wait too (per-address order).
* A final failure is told to the agent as a system note and wakes it.
* At-least-once with idempotent sends (issue 14): before a row goes to an adapter the host
  records its *send intent* (a line in the host's intent log, ``host/send_intents.py``:
  no commit on the reply's path, issue 19); the outcome (``delivered`` row, attempt,
  cursor) is committed afterwards. Outcomes not yet committed are committed before the
  next row's intent is recorded; a pass ends by holding the last ones, with the cursor,
  for the session's next write of rows to carry (or alone, ``HOLD_S`` later:
  ``host/delivery_hold.py``), so a session has at most one row whose fate is unknown at
  any moment. After a crash, a row
  with an intent and no outcome is sent again with ``resend=True`` and the same ``key``
  (one possible visible duplicate per crash, none where the platform deduplicates by key).
  An intent that cannot be written (full disk) means no send; an outcome that cannot be
  written is kept in memory, so the row is not sent twice while the host lives, and
  written later.
* Across sessions, not only per session: sends to a channel whose adapter cannot
  deduplicate by key (``dedupes_sends`` false: Telegram, webhooks, the tests' fake) take
  turns across all sessions, and each one's outcome is committed before the channel's
  next intent (by whichever session sends next: ``OutcomeHold.before_send``), so a host
  kill leaves at most one row with an unknown fate per such channel. Adapters
  that deduplicate (the CLI, Discord, Slack, the web chat) send concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from carapace.channels.base import ChannelAdapter
from carapace.db.session import SessionPaths
from carapace.db.sessions import Session
from carapace.host.a2a_guard import A2AGuard
from carapace.host.actions import SystemActions
from carapace.host.delivery_hold import OutcomeHold
from carapace.host.delivery_log import (
    RECORD_RETRY_S,
    Records,
    RideAlong,
    delivered_of,
    host_tables,
    known_of,
    tables_and_cursor,
    wait_until,
)
from carapace.host.dispatch import deliver_row
from carapace.host.outbox_pool import OutboxReader
from carapace.host.outbox_reader import (
    MAX_CONTENT_BYTES,
    MAX_READ_CONTENT,
    MAX_ROWS,
    OutboxRefused,
    OutRow,
    read_pass,
)
from carapace.host.send_intents import SendIntents
from carapace.host.session_writer import FolderReplaced, Key
from carapace.host.sessions import SessionManager, keep_bounded
from carapace.timefmt import parse_ts

logger = logging.getLogger(__name__)

SENT_KEPT = 4096  # rows whose platform message id is kept for an edit naming the row


@dataclass
class DrainResult:
    delivered: int = 0
    failed: int = 0
    next_retry: datetime | None = None
    more: bool = False


_Along = tuple[Callable[[sqlite3.Connection], Any], Callable[[Any], None]]  # (read, heard)


class Delivery:
    def __init__(
        self,
        db: sqlite3.Connection,
        sessions: SessionManager,
        adapters: dict[str, ChannelAdapter],
        actions: SystemActions,
        wake: Callable[[str], None],
        intents: SendIntents,
    ) -> None:
        self.db = db
        self.intents = intents
        self.sessions = sessions
        self.adapters = adapters
        self.actions = actions
        self.wake = wake
        self._inflight: set[str] = set()
        # per channel that cannot deduplicate by key: one send at a time across sessions,
        # each one's outcome committed before the next intent, so a host kill re-sends at
        # most one reply there (a lock per channel: a slow webhook never holds up Telegram)
        self._unknown_fate: dict[str, asyncio.Lock] = {}
        self._again: set[str] = set()
        self._records: dict[str, Records] = {}  # per session: outcomes not yet committed
        # per session: (key of inbound.db, delivery cursor) as last read or committed by
        # this host, the only writer of the cursor; a re-made file (a new key: another
        # generation of the folder, session_writer.Key) is read again
        self._cursors: dict[str, tuple[Key, int]] = {}
        # per session: (key of inbound.db, a seq above which no host process has read a
        # row of its outbound.db): no delivery record can name such a row, so a pass whose
        # rows are all above it needs no look into inbound.db (one thread hop less per
        # reply, issue 19). Set from the file's highest seq at this host's first look (an
        # earlier process, gone before this one started, read nothing written since), then
        # raised past every row this host reads.
        self._unread_above: dict[str, tuple[Key, int]] = {}
        self.a2a_guard = A2AGuard()  # hop and rate bounds of agent-to-agent messages
        self.outbox = OutboxReader()  # every outbound.db read: checked, bounded, off the loop
        self.previews: Any = None  # host/preview.PreviewKeeper: replies shown as written
        # the host's other writes to a session's file that may share an outcomes commit
        # (its runner's acks, copied into messages_in): see RideAlong
        self.ride_along: Callable[[str], Awaitable[RideAlong | None]] | None = None
        self.ride_along_now: Callable[[str], RideAlong | None] | None = None  # (no wait)
        # per session: another read of its outbound.db to make with the next pass's read
        # (the runner's new acks after its commit), and who hears the result: see read_along
        self._along: dict[str, _Along] = {}
        # hears each row tried: "delivered", "failed", or None (waits for a retry); must
        # not raise (ops/metrics.py counts them)
        self.on_outcome: Callable[[OutRow, str | None], None] | None = None
        self.hold = OutcomeHold(self)  # a pass's outcomes wait for a write to carry them
        # (session id, outbound row id) → the platform's message id, for the last rows sent
        self._sent: dict[tuple[str, str], str] = {}

    def read_along(self, session_id: str, read: Callable[[sqlite3.Connection], Any],
                   heard: Callable[[Any], None]) -> None:  # fmt: skip
        """Have the session's next pass run ``read`` on outbound.db in its own read's
        transaction (one thread hop and one lock of the file for both, issue 19: a second
        reader beside the pass's held its read back ~0.5 ms) and give ``heard`` the result
        before anything is sent. :meth:`take_along` says whether it is still to be done
        (the pass did not read: it was folded into one under way, or found nothing to read)."""
        self._along[session_id] = (read, heard)

    def take_along(self, session_id: str) -> bool:
        """Withdraw the session's pending :meth:`read_along`; True when it was not done."""
        return self._along.pop(session_id, None) is not None

    def _open(self, paths: SessionPaths) -> sqlite3.Connection:
        """The session's inbound.db with the host's delivery tables (a live session's kept
        connection; give it back with ``sessions.done_with``). Checked on every open (one
        indexed read): a session folder deleted and made again gets them back."""
        inb = self.sessions.open_inbound(paths)
        host_tables(inb)
        return inb

    def note_sent(self, session_id: str, row_id: str, platform_message_id: str) -> None:
        if len(self._sent) >= SENT_KEPT:
            del self._sent[next(iter(self._sent))]
        self._sent[(session_id, row_id)] = platform_message_id

    def sent_as(self, session_id: str, message_id: object) -> str:
        """The platform's id of the message an edit or a reaction names. A runner names its
        own reply by the platform id in ``delivered`` when it finds one there, else by the
        reply's row id: a reply sent a moment ago has its ``delivered`` row still held
        (host/delivery_hold.py) or being written. Such a row id of this session's is the
        message this host sent as ``platform_message_id``; anything else is passed on."""
        mid = str(message_id)
        return self._sent.get((session_id, mid), mid)

    def records(self, session_id: str) -> Records:
        """The session's outcomes and attempts not yet committed."""
        return self._records.setdefault(session_id, Records())

    def _done(self, inb: sqlite3.Connection, ids: list[str]) -> set[str]:
        return delivered_of(inb, ids)

    async def _commit(self, session_id: str, paths: SessionPaths, intent: str | None) -> bool:
        """The session's uncommitted outcomes (one transaction, only when there are some,
        on the session's writer thread: off the event loop, issue 19), then (optionally)
        the send intent of the next row. False when either could not be written (then no
        send). Awaited: the outcomes are on disk before the intent is recorded; one commit
        of a session's records at a time (a held one's timer, another session's turn on
        the channel, a write carrying them: ``host/delivery_hold.py``)."""
        async with self.hold.turn(session_id):
            if not await self.hold.write(session_id, paths):
                return False
        if intent is not None:
            try:
                self.intents.record(session_id, intent)
            except OSError as exc:
                logger.warning("send intent of %s (session %s) not written: not sent now: %s",
                               intent, session_id, exc)  # fmt: skip
                return False
        return True

    def _move_cursor(self, session_id: str, key: Key, seq: int) -> None:
        """Every row at or below ``seq`` is done: the cursor to commit with the records, and
        the one the next pass reads above (held records are done too: read again, their
        rows would be looked up in a file that does not have them yet)."""
        self.records(session_id).cursor = seq
        held = self._cursors.get(session_id)
        if held is not None and held[0] == key:
            self._cursors[session_id] = (key, seq)

    async def drain(self, session_id: str, now: Callable[[], datetime]) -> DrainResult:
        """Deliver what is due for one session; concurrent calls coalesce (no double send)."""
        if session_id in self._inflight:
            self._again.add(session_id)
            return DrainResult()
        self._inflight.add(session_id)
        total = DrainResult()
        try:
            while True:
                self._again.discard(session_id)
                r = await self._drain(session_id, now())
                total.delivered += r.delivered
                total.failed += r.failed
                total.next_retry = r.next_retry
                if session_id not in self._again and not r.more:
                    return total
        finally:
            self._inflight.discard(session_id)

    async def _drain(self, session_id: str, now: datetime) -> DrainResult:
        result = DrainResult()
        session = self.sessions.current(session_id)  # (from the memo, checked now)
        if session is None:
            return result
        paths = self.sessions.paths(session)
        if not paths.outbound.exists():  # (a missing inbound.db: the cursor's key says so)
            return result
        at = await self._cursor(session_id, paths, now, result)
        if at is None:
            return result
        key, cursor = at
        read = await self._read(session, paths, key, cursor, now, result)
        if read is None:
            return result
        rows, unread = read
        try:  # only now: a session without a runner has no kept one, and opening a
            # connection on the event loop for a pass with nothing to send cost ms
            inb = self.sessions.open_inbound(paths)  # a live session's kept one: no I/O
        except FileNotFoundError:
            return result
        except sqlite3.Error as exc:
            _waits(session_id, exc, now, result)
            return result
        try:
            await self._send_pass(session, paths, key, cursor, rows, unread, inb, now, result)
        finally:
            self.sessions.done_with(inb)
        return result

    async def _cursor(self, session_id: str, paths: SessionPaths, now: datetime,
                      result: DrainResult) -> tuple[Key, int] | None:  # fmt: skip
        """The file's key and its delivery cursor (as this host last wrote it, else read on
        the session's writer thread, after its pending writes: the event loop never waits
        on a lock held by a commit, issue 19); None: no pass now (``result`` says when)."""
        try:
            key = self.sessions.writers.key(session_id, paths)
            known_cursor = self._cursors.get(session_id)
            if known_cursor is not None and known_cursor[0] == key:
                cursor = known_cursor[1]  # this host writes the cursor: no read needed
            else:
                cursor = await self.sessions.writers.call(
                    session_id, paths, tables_and_cursor, expect=key
                )
                if session_id not in self._cursors:
                    keep_bounded(self._cursors)  # a cache: the cursor is read again
                self._cursors[session_id] = (key, cursor)
            self.sessions.note_out_seq(session_id, cursor)  # other_max needs no read then
        except FolderReplaced:  # made again since the stat above: read the new files
            self._again.add(session_id)
            return None
        except FileNotFoundError:
            return None
        except sqlite3.Error as exc:
            _waits(session_id, exc, now, result)
            return None
        return key, cursor

    async def _read(self, session: Session, paths: SessionPaths, key: Key, cursor: int,
                    now: datetime, result: DrainResult,
                    ) -> tuple[list[OutRow], bool] | None:  # fmt: skip
        """The outbound rows above ``cursor`` (checked, bounded, off the loop), with the
        read asked for along (:meth:`read_along`), and whether no host read them before
        (:meth:`_unread_rows`); None: nothing to send now."""
        session_id = session.id
        mark = self._unread_above.get(session_id)
        first = mark is None or mark[0] != key  # this host's first look (_unread_above)
        along = self._along.get(session_id)  # taken only once done (else its owner's)
        try:
            rows, first_top, also = await self.outbox.call(functools.partial(
                read_pass, paths.outbound, cursor, top=first,
                also=along[0] if along is not None else None,
            ))  # fmt: skip
        except FileNotFoundError:
            return None
        except OutboxRefused as exc:
            self.outbox.refused(self.sessions, session, exc, now, self.wake)
            return None
        self.outbox.accepted(session_id)
        if along is not None and isinstance(also, sqlite3.Error):  # its owner reads again
            logger.info("session %s: the read along with delivery's failed: %s",
                        session_id, also)  # fmt: skip
        elif along is not None:
            if self._along.get(session_id) is along:
                del self._along[session_id]
            along[1](also)
        if rows and self.sessions.writers.current_key(session_id, paths) != key:
            # the folder was made again while the rows were read: they may be the new
            # outbound.db's, read above the old file's cursor; read again from the start
            self._again.add(session_id)
            return None
        if not rows:
            return None
        self.sessions.note_out_seq(session_id, max(int(r["seq"] or 0) for r in rows))
        result.more = len(rows) >= MAX_ROWS or (  # a full batch: drain() reads on if it moved
            sum(len(r["content"] or "") for r in rows) + MAX_CONTENT_BYTES > MAX_READ_CONTENT
        )
        return rows, self._unread_rows(session_id, key, rows, first_top)

    async def _send_pass(self, session: Session, paths: SessionPaths, key: Key, cursor: int,
                         rows: list[OutRow], unread: bool, inb: sqlite3.Connection,
                         now: datetime, result: DrainResult) -> None:  # fmt: skip
        """Send ``rows`` in order (per address: a row that waits holds up the later rows to
        its address), then commit the outcomes and the cursor."""
        session_id = session.id
        ids = [r["id"] for r in rows]
        rec = self.records(session_id)
        if rec.key is not None and rec.key != key:  # records of a deleted, re-made folder
            rec = self._records[session_id] = Records()
        rec.key = key  # the file whose cursor this pass read
        known: set[str] = set()
        states: dict[str, dict[str, Any]] = {}
        intents: set[str] = set()
        try:
            if not unread:  # (rows never read by a host: no record names them)
                known, states, intents = await self.sessions.writers.call(
                    session_id, paths, functools.partial(known_of, ids=ids), expect=key
                )
        except FolderReplaced:
            self._again.add(session_id)
            return
        except (OSError, sqlite3.Error) as exc:
            _waits(session_id, exc, now, result)
            return
        done = known | set(rec.outcomes)
        blocked: set[tuple[Any, ...]] = set()
        new_cursor, contiguous = cursor, True
        for row in rows:
            if row["id"] in done:
                if contiguous:
                    new_cursor = row["seq"]
                continue
            dest = (row["channel_type"], row["platform_id"], row["thread_id"])
            wait = wait_until(row, rec.state(states, row["id"]), now)
            if wait is not None or dest in blocked:
                contiguous = False
                blocked.add(dest)
                if wait is not None:
                    result.next_retry = min(result.next_retry or wait, wait)
                continue
            turn = self._turn_lock(row)
            async with turn or contextlib.nullcontext():
                # an intent from before (a crash), looked up before this send's own
                resend = row["id"] in intents or self.intents.maybe_sent(session_id, row["id"])
                if turn is not None and not await self.hold.before_send(
                    str(row["channel_type"]), session_id
                ):  # the channel's last send (another session's) has its fate on disk first
                    _retry_soon(now, result)
                    break
                if not await self._commit(session_id, paths, row["id"]):  # the intent
                    _retry_soon(now, result)
                    break
                if resend:
                    logger.warning("message %s (session %s) may have been sent before a "
                                   "crash: sending it again with its key", row["id"],
                                   session_id)  # fmt: skip
                outcome = await deliver_row(self, session, paths, row, inb, states, now, resend)
                if self.on_outcome is not None:
                    self.on_outcome(row, outcome)
                if turn is not None:  # its fate on disk before the channel's next send
                    if outcome is not None and contiguous:  # the cursor rides along
                        self._move_cursor(session_id, key, row["seq"])
                    self.hold.sent(str(row["channel_type"]), session_id)
            if outcome is None:
                contiguous = False
                blocked.add(dest)
                nxt = self.records(session_id).attempts.get(row["id"])
                if nxt is not None:
                    when = parse_ts(nxt[1])
                    result.next_retry = min(result.next_retry or when, when)
                continue
            if outcome == "delivered":
                result.delivered += 1
            else:
                result.failed += 1
            if contiguous:
                new_cursor = row["seq"]
            await asyncio.sleep(0)  # a long batch never holds the event loop (issue 19)
        if new_cursor == cursor:
            result.more = False  # nothing moved: no busy loop over a blocked full batch
        else:
            self._move_cursor(session_id, key, new_cursor)
        # committed by the session's next write (a message for the agent: one commit for
        # both), before its next send, or alone in a moment (host/delivery_hold.py)
        self.hold.hold(session_id, paths)

    def _unread_rows(self, session_id: str, key: Key, rows: list[OutRow],
                     first_top: int | None) -> bool:  # fmt: skip
        """Whether no host process has read any of ``rows`` before this pass (then
        inbound.db holds no record of them); notes them as read either way. ``first_top``:
        the file's highest seq, read with the rows at this host's first look at the file
        (whatever was there may have been read by an earlier host: none is unread then)."""
        top = max(int(r["seq"] or 0) for r in rows)
        mark = self._unread_above.get(session_id)
        if first_top is not None:
            if session_id not in self._unread_above:
                keep_bounded(self._unread_above)
            self._unread_above[session_id] = (key, max(first_top, top))
            return False
        if mark is None or mark[0] != key:  # dropped meanwhile: a first look next pass
            self._unread_above.pop(session_id, None)
            return False
        self._unread_above[session_id] = (key, max(mark[1], top))
        return min(int(r["seq"] or 0) for r in rows) > mark[1]

    def _turn_lock(self, row: OutRow) -> asyncio.Lock | None:
        """The lock of the row's channel when its adapter cannot deduplicate sends by key
        (sends there take turns across sessions); None otherwise."""
        ct = row["channel_type"]
        if row["kind"] == "system" or ct in (None, "", "agent"):
            return None
        adapter = self.adapters.get(ct)
        if adapter is None or getattr(adapter, "dedupes_sends", False):
            return None
        return self._unknown_fate.setdefault(str(ct), asyncio.Lock())

    def tell_agent(self, session: Session, text: str, now: datetime) -> None:
        try:
            self.sessions.notify_agent(session, text, now=now)
        except (sqlite3.Error, OSError) as exc:  # e.g. a full disk: the log keeps it
            logger.error("note to the agent of session %s not written (%s): %s",
                         session.id, exc, text)  # fmt: skip
            return
        self.wake(session.id)


def _waits(session_id: str, exc: BaseException, now: datetime, result: DrainResult) -> None:
    """A pass that cannot read or write the session's inbound.db now: tried again soon."""
    logger.warning("delivery of session %s waits: %s", session_id, exc)
    _retry_soon(now, result)


def _retry_soon(now: datetime, result: DrainResult) -> None:
    retry = now + timedelta(seconds=RECORD_RETRY_S)
    result.next_retry = min(result.next_retry or retry, retry)
    result.more = False


async def gather_drains(delivery: Delivery, ids: list[str], now: Callable[[], datetime]) -> int:
    results = await asyncio.gather(*(delivery.drain(i, now) for i in ids))
    return sum(r.delivered for r in results)
