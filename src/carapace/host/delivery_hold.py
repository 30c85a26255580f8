"""A delivery pass's outcomes wait a moment for the session's next write to carry them
(issue 19); every commit of a session's delivery records goes through here.

A pass ends by committing what it did (the ``delivered`` rows, attempts, the cursor) to
the session's ``inbound.db``: a commit of its own, ~1.5 ms of fsyncs, and a wake of the
runner, which watches that file. When the chat's next message came meanwhile (a client
that sends as soon as it hears the reply, a busy group, a note from the host) its insert
waited behind that commit on the session's writer thread, on the path to the agent. Now
the pass *holds* its records instead (:meth:`OutcomeHold.hold`), and they are committed by
whichever comes first:

* the session's next write of rows into ``inbound.db`` (``SessionManager.write_rows``), in
  its own transaction (:meth:`OutcomeHold.carry`): one commit for both;
* the session's next send: its intent waits for them, as it always did
  (``Delivery._commit``);
* on a channel whose sends take turns across sessions (no deduplication by key), that
  channel's next send by any session (:meth:`OutcomeHold.before_send`): as before, a host
  kill leaves at most one row with an unknown fate per such channel, and per session;
* alone, :data:`HOLD_S` later while rows of the session are on their way into its file
  (they carry them), else :data:`HOLD_BRIEF_S` later (``Ingest.writing``);
* the host's stop, and ``Host.deliver_once`` (:meth:`OutcomeHold.flush_all`).

What a held record stands for was sent; until it is committed its row's intent is open in
the host's intent log, so a host killed meanwhile re-sends the row once, flagged and with
its key, exactly as a kill between a send and its commit did before (that window was the
commit's length; it is now that and :data:`HOLD_BRIEF_S` more, or :data:`HOLD_S` when the
session's next rows were already on their way). A write carrying records that fails (or
whose records fail: a savepoint of their own, so the write itself never fails for them)
gives them back, held again; a session's records are committed by one writer at a time
(:meth:`OutcomeHold.turn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from carapace.db.connection import transaction
from carapace.db.session import SessionPaths
from carapace.host.delivery_log import RECORD_RETRY_S, Records, RideAlong, host_tables
from carapace.host.session_writer import FolderReplaced

if TYPE_CHECKING:
    from carapace.host.delivery import Delivery

logger = logging.getLogger(__name__)

# held outcomes not carried by a write within this are committed alone: while rows of the
# session are on their way into its file, HOLD_S (they carry them within ~1 ms); else only
# HOLD_BRIEF_S: a message sent as soon as the reply came reaches the session's writer ~0.3 ms
# later, and each ms more widens the window in which a host kill re-sends the reply (chaos
# runs as a normal user re-sent one in 2 of 3 runs with 5 and 20 ms for every reply)
HOLD_S = 0.005
HOLD_BRIEF_S = 0.001


class OutcomeHold:
    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.hold_s = HOLD_S
        self.brief_s = HOLD_BRIEF_S
        self._held: dict[str, tuple[SessionPaths, asyncio.TimerHandle]] = {}
        # per session: a commit of its records under way (its own, or carried by a write)
        self._busy: dict[str, asyncio.Future[None]] = {}
        # per channel whose sends take turns: the session that sent there last (its
        # outcome may be held)
        self._fate: dict[str, str] = {}
        self._tasks: set[asyncio.Task[bool]] = set()

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str) -> AsyncIterator[None]:
        """One commit of the session's records at a time (a carried one included)."""
        while (busy := self._busy.get(session_id)) is not None:
            await asyncio.shield(busy)
        mine = asyncio.get_running_loop().create_future()
        self._busy[session_id] = mine
        try:
            yield
        finally:
            self._release(session_id, mine)

    def _release(self, session_id: str, mine: asyncio.Future[None]) -> None:
        if self._busy.get(session_id) is mine:
            del self._busy[session_id]
        if not mine.done():
            mine.set_result(None)

    def hold(self, session_id: str, paths: SessionPaths, delay: float | None = None) -> None:
        """The session's records wait (if it has any, and they are not held already):
        :data:`HOLD_S` while rows of the session are on their way into its file (they will
        carry them), else only :data:`HOLD_BRIEF_S` (a message sent as soon as the reply
        came is routed within it; a longer wait would only widen a host kill's window)."""
        if not self.delivery._records.get(session_id) or session_id in self._held:
            return
        if delay is None:
            ingest = self.delivery.sessions.ingest
            coming = ingest is not None and ingest.writing(session_id)
            delay = self.hold_s if coming else self.brief_s
        handle = asyncio.get_running_loop().call_later(delay, self._due, session_id)
        self._held[session_id] = (paths, handle)

    def held(self, session_id: str) -> bool:
        return session_id in self._held

    def _due(self, session_id: str) -> None:
        task = asyncio.ensure_future(self.flush(session_id))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._flushed, session_id))

    def _flushed(self, session_id: str, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("delivery records of session %s not committed: %r (kept in memory, "
                         "written at the next pass or the stop)", session_id, exc)  # fmt: skip

    async def flush(self, session_id: str) -> bool:
        """Commit the session's held records now (after a commit of them under way); False
        when they could not be written (kept, and tried again later)."""
        held = self._held.pop(session_id, None)
        if held is not None:
            held[1].cancel()
            paths = held[0]
        else:
            session = self.delivery.sessions.get(session_id)
            if session is None:
                return True
            paths = self.delivery.sessions.paths(session)
        if await self.delivery._commit(session_id, paths, None):
            return True
        if self.delivery._records.get(session_id):
            if paths.inbound.exists():
                self.hold(session_id, paths, RECORD_RETRY_S)
            else:  # the session's folder is gone: nothing to write them to
                logger.info("delivery records of session %s dropped: its folder is gone",
                            session_id)  # fmt: skip
                self.delivery._records.pop(session_id, None)
        return False

    async def flush_all(self, *, everything: bool = False) -> bool:
        """Every held record committed (a driver's step); ``everything``: every record kept
        at all, held or not (the host's stop: a pass cancelled on its way leaves records
        that were never held)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        ok = True
        todo = dict.fromkeys(self._held)
        if everything:
            todo.update((sid, None) for sid, rec in self.delivery._records.items() if rec)
        for session_id in todo:
            ok = await self.flush(session_id) and ok
        return ok

    async def write(self, session_id: str, paths: SessionPaths) -> bool:
        """Commit the session's records now (the caller holds its :meth:`turn`); False when
        they could not be written (kept, or dropped with a folder made again)."""
        d = self.delivery
        rec = d._records.get(session_id)  # (none made here: nothing kept per session)
        if not rec:
            return True
        extra = await d.ride_along(session_id) if d.ride_along is not None else None
        # taken out: what a pass records while the thread writes this goes in the next one
        snap = rec.take()
        finished = [*snap.outcomes, *snap.attempts]

        def write(conn: sqlite3.Connection) -> Any:
            host_tables(conn)
            with transaction(conn):
                snap.write(conn)
                return extra.apply(conn) if extra is not None else None

        try:  # only into the file they are about (not a folder made again since)
            carried = await d.sessions.writers.call(session_id, paths, write, expect=snap.key)
        except FolderReplaced:
            if extra is not None:
                extra.undo()
            # the outcomes of rows of a deleted outbound.db: nothing to keep them for;
            # the drain reads the new files at once
            logger.info("delivery records of session %s dropped: its folder was made "
                        "again", session_id)  # fmt: skip
            left = d._records.get(session_id)
            if left is not None and left.key == snap.key:
                del d._records[session_id]
            d._cursors.pop(session_id, None)
            d._unread_above.pop(session_id, None)
            d.intents.done(session_id, finished)
            d._again.add(session_id)
            return False
        except (sqlite3.Error, OSError) as exc:
            if extra is not None:
                extra.undo()
            d.records(session_id).restore(snap)
            logger.warning("delivery records of session %s not written (kept, retried): %s",
                           session_id, exc)  # fmt: skip
            return False
        except BaseException:  # cancelled (the host stops): written later, or again
            if extra is not None:
                extra.undo()
            d.records(session_id).restore(snap)
            raise
        if extra is not None:
            extra.done(carried)
        self.committed(session_id, snap)
        return True

    def committed(self, session_id: str, snap: Records) -> None:
        """``snap`` (taken from the session's records) is on disk."""
        d = self.delivery
        left = d._records.get(session_id)
        if left is not None and not left and session_id not in d._inflight:
            del d._records[session_id]
        held = d._cursors.get(session_id)
        if snap.cursor is not None and held is not None and held[0] == snap.key:
            d._cursors[session_id] = (held[0], max(held[1], snap.cursor))  # (held: ahead)
        elif snap.cursor is not None:
            d._cursors.pop(session_id, None)  # read again at the next pass
        d.intents.done(session_id, [*snap.outcomes, *snap.attempts])

    # ------------------------------------------------------------------ turn channels
    async def before_send(self, channel: str, session_id: str) -> bool:
        """Before a send on a channel whose sends take turns: the last one there, by
        another session, has its outcome on disk (False: it could not be written; no send)."""
        other = self._fate.get(channel)
        if other is None or other == session_id:
            return True
        if not await self.flush(other):
            return False
        if self._fate.get(channel) == other:
            del self._fate[channel]
        return True

    def sent(self, channel: str, session_id: str) -> None:
        self._fate[channel] = session_id

    # ------------------------------------------------------------------ carried by a write
    def carry(self, session_id: str) -> RideAlong | None:
        """The session's held records, to be written in the transaction of a write of its
        own to the session's ``inbound.db`` (on the event loop, as that write is handed to
        the writer thread); None when there are none, or a pass or commit of them is
        under way (they are left to it)."""
        d = self.delivery
        rec = d._records.get(session_id)
        if (session_id not in self._held or not rec or session_id in self._busy
                or session_id in d._inflight):  # fmt: skip
            return None
        paths, handle = self._held.pop(session_id)
        handle.cancel()
        snap = rec.take()
        extra = d.ride_along_now(session_id) if d.ride_along_now is not None else None
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._busy[session_id] = mine
        writers = d.sessions.writers

        def apply(conn: sqlite3.Connection) -> tuple[Any] | None:
            """On the writer thread, inside the write's transaction: (what the acks' write
            answered,), or None when nothing was written."""
            if snap.key is not None and writers.current_key(session_id, paths) != snap.key:
                return None  # not the file they are about: the flush sorts it out
            try:
                with transaction(conn):  # a savepoint: a failure here leaves the write alone
                    host_tables(conn)
                    snap.write(conn)
                    return (extra.apply(conn) if extra is not None else None,)
            except sqlite3.Error as exc:
                logger.warning("delivery records of session %s not carried: %s",
                               session_id, exc)  # fmt: skip
                return None

        def done(applied: Any) -> None:
            if isinstance(applied, tuple):
                self.committed(session_id, snap)
                if extra is not None:
                    extra.done(applied[0])
            else:
                back()
            self._release(session_id, mine)

        def back() -> None:
            if extra is not None:
                extra.undo()
            d.records(session_id).restore(snap)
            self.hold(session_id, paths)

        def undo() -> None:
            back()
            self._release(session_id, mine)

        return RideAlong(apply, done, undo)
