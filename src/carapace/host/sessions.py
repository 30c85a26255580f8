"""The session manager: find-or-create sessions, write inbound rows, prepare a wake.

Spec/host.md §3.7–3.8 and §4.5. Find-or-create runs in one ``BEGIN IMMEDIATE`` on the
central DB, so two routers (or a router and the admin thread) never create two sessions
for one key. ``agent-shared`` sessions are keyed ``(agent group, NULL chat, NULL thread)``
and never merge into a chat's ``shared``/``per-thread`` session (fixes §11.1 item 14).

The work index ``carapace_session_work`` (central, migration ``carapace-session-work``)
lists the sessions that may have due or in-flight work with the time they are next due; the
sweep visits only those rows (fixes §11.4 item 34). Its writes are ``WorkMarks``
(host/work_index.py); the files a wake writes are host/wake_files.py's.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from carapace.config import Home
from carapace.db.connection import sync_wal, transaction
from carapace.db.memo import ReadMemo
from carapace.db.session import (
    SessionPaths,
    init_session_folder,
    insert_message_in,
    insert_message_in_if_new,
    max_seq,
    next_even,
    open_inbound,
)
from carapace.db.sessions import (
    Session,
    create_session,
    find_session,
    get_session,
)
from carapace.errors import StoreError
from carapace.host import outbox_reader
from carapace.host.attachments_in import extract_attachments
from carapace.host.delivery_log import RideAlong, delivery_cursor
from carapace.host.ingest import Delayed, Ingest, Outcome
from carapace.host.session_writer import Key, SessionWriters
from carapace.host.work_index import WorkMarks
from carapace.jsonutil import dumps
from carapace.timefmt import iso, new_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

PATHS_KEPT = 4096  # SessionPaths objects kept (a cache: cleared when full)
LAST_ACTIVE_EVERY_S = 1.0  # a session's last_active is written at most this often
# Notes the host writes to one session in a minute (every undeliverable row the agent
# writes gets one: an agent writing thousands must not get thousands); more are counted,
# and the next note after the minute says how many were not written.
NOTES_PER_MINUTE = 60
NOTE_WINDOW = timedelta(minutes=1)
LAST_ACTIVE_EVERY = timedelta(seconds=LAST_ACTIVE_EVERY_S)
# Per-session facts the host keeps only to save work (last_active written, the outbound
# seq last read, an inbound.db seen): caches, cleared when one holds this many sessions,
# so a host that serves new sessions for months does not grow by them (bench soak)
FACTS_KEPT = 4096


def keep_bounded(cache: dict[str, Any] | set[str]) -> None:
    """Make room in a per-session cache about to take one more entry (cleared when it
    holds ``FACTS_KEPT``: every entry is a saving, never a fact only it holds)."""
    if len(cache) >= FACTS_KEPT:
        cache.clear()


def _refused(session_id: str, message_id: object, exc: sqlite3.IntegrityError) -> StoreError:
    logger.error("session %s: inbound.db refused message %s: %s", session_id, message_id, exc)
    return StoreError(
        f"message not stored: session {session_id}'s inbound.db refused it ({exc}); "
        "run `carapace doctor`"
    )


class SessionManager:
    def __init__(self, home: Home, db: sqlite3.Connection) -> None:
        self.home = home
        self.db = db
        # central reads of routing, kept while the central DB is unchanged (db/memo.py)
        self.memo = ReadMemo(db)
        listed = db.execute("PRAGMA database_list").fetchone()
        self.central_path: str | None = listed[2] if listed and listed[2] else None
        # Live sessions (a runner runs): one persistent host connection to inbound.db, used
        # on the event loop's thread only; closed when the runner ends (issue 19).
        self._kept: dict[str, sqlite3.Connection] = {}
        self.work = WorkMarks(db)  # the sweep's work index (host/work_index.py)
        self._touched: dict[str, datetime] = {}  # when last_active was last written
        # per session: [start of its note minute, notes written in it, notes not written]
        self._note_window: dict[str, list[Any]] = {}
        self._uses: dict[int, int] = {}  # id(kept connection) -> users right now
        self._kept_key: dict[str, Key | None] = {}  # the file each kept connection opened
        # The highest outbound seq the host has read per session (delivery notes it): the
        # other side's maximum for a new inbound seq, without reading outbound.db inline.
        self._out_max: dict[str, int] = {}
        self._paths: dict[tuple[str, str], SessionPaths] = {}
        self.live_check_s = 30.0  # the host's SLA check of a live runner (sweep.SLA_CHECK_S)
        # inbound writes and delivery's outcome commits run here, off the event
        # loop, in submission order per session (host/session_writer.py, issue 19)
        self.writers = SessionWriters()
        self._making: dict[str, asyncio.Event] = {}  # session folders being made off the loop
        # sessions whose inbound.db this host has seen: the router does not stat it per
        # message; a write that finds it gone makes the folder again (_in_folder)
        self._present: set[str] = set()
        # told when a session's folder turns out to have been deleted (and is made again):
        # a runner of that session still works on the deleted files (the host stops it)
        self.on_folder_remade: Callable[[str], None] | None = None
        # the host's ingest journal: a routed row is acknowledged once journaled (None: a
        # bare manager writes it before it returns)
        self.ingest: Ingest | None = None
        # delivery's held outcomes of a session, to ride with its next rows' commit (one
        # commit for both: host/delivery_hold.py); None: none
        self.carry: Callable[[str], RideAlong | None] | None = None

    # ------------------------------------------------------------ persistent connections
    def keep(self, session: Session) -> None:
        """The session's runner starts: keep its files' connections open until ``release``."""
        paths = self.paths(session)
        if session.id not in self._kept:
            self._kept[session.id] = open_inbound(paths)
            self._kept_key[session.id] = self.writers.current_key(session.id, paths)
        outbox_reader.keep(paths.outbound)

    def release(self, session_id: str) -> None:
        """The runner ended: close its kept connections (one still in use by a delivery pass
        awaiting a read closes when that pass gives it back)."""
        conn = self._kept.pop(session_id, None)
        self._kept_key.pop(session_id, None)
        self.writers.forget(session_id)
        if conn is not None and not self._uses.get(id(conn)):
            self._uses.pop(id(conn), None)
            conn.close()
        session = self.get(session_id)
        if session is not None:
            outbox_reader.release(self.paths(session).outbound)

    def _folder_remade(self, session_id: str) -> None:
        self._present.discard(session_id)
        # a new generation: what was kept of the old files is not taken for the new ones,
        # whatever inode number the new inbound.db gets (a freed one can come back)
        self.writers.replaced(session_id)
        if self.on_folder_remade is not None:
            self.on_folder_remade(session_id)

    def release_all(self) -> None:
        for sid in list(self._kept):
            self.release(sid)

    def kept(self, session_id: str) -> sqlite3.Connection | None:
        return self._kept.get(session_id)

    def open_inbound(self, paths: SessionPaths) -> sqlite3.Connection:
        """The kept connection of a live session, else a fresh one (give it back with
        :meth:`done_with`, which closes fresh ones, and a kept one released meanwhile)."""
        sid = paths.root.name
        conn = self._kept.get(sid)
        kept_key = self._kept_key.get(sid)
        if conn is not None and kept_key != self.writers.current_key(sid, paths):
            # the session folder was deleted (and maybe made again): the kept connection
            # holds the deleted file; drop it, the fresh one below opens the current file
            logger.warning("session %s: inbound.db replaced; its kept connection is dropped",
                           sid)  # fmt: skip
            self.release(sid)
            if kept_key is None or kept_key[1] == self.writers.generation(sid):
                # not made again by this host (that moved the generation and said so)
                self._folder_remade(sid)
            conn = None
        if conn is None:
            return open_inbound(paths)
        self._uses[id(conn)] = self._uses.get(id(conn), 0) + 1
        return conn

    def done_with(self, conn: sqlite3.Connection) -> None:
        left = self._uses.get(id(conn))
        if left is None:  # a fresh connection
            conn.close()
            return
        self._uses[id(conn)] = left - 1
        if left <= 1 and conn not in self._kept.values():  # released while in use
            self._uses.pop(id(conn), None)
            conn.close()

    @contextmanager
    def inbound(self, paths: SessionPaths) -> Iterator[sqlite3.Connection]:
        conn = self.open_inbound(paths)
        try:
            yield conn
        finally:
            self.done_with(conn)

    def note_out_seq(self, session_id: str, seq: int) -> None:
        if seq > self._out_max.get(session_id, -1):
            if session_id not in self._out_max:
                keep_bounded(self._out_max)
            self._out_max[session_id] = seq

    def paths(self, session: Session) -> SessionPaths:
        # asked for several times per routed message: one immutable object per session
        # (the path joins cost ~20 µs); a few thousand kept at most
        key = (session.agent_group_id, session.id)
        paths = self._paths.get(key)
        if paths is None:
            if len(self._paths) >= PATHS_KEPT:
                self._paths.clear()
            paths = self._paths[key] = SessionPaths.of(self.home.data_dir, *key)
        return paths

    def ready(self, session: Session) -> bool:
        """Whether the session's folder and DBs are made. A new session's row is visible a
        moment before them: :meth:`resolve_async` makes them in a worker thread."""
        return session.id not in self._making and self.paths(session).outbound.exists()

    def get(self, session_id: str) -> Session | None:
        return get_session(self.db, session_id)

    def current(self, session_id: str) -> Session | None:
        """:meth:`get`, answered from the memo while the central DB is unchanged (checked
        now: the memo is exact, db/memo.py); for an operation that goes on with central
        reads the memo may answer too (a delivery pass: its refusal checks)."""
        self.memo.check()
        return self.memo.get(("session-row", session_id), lambda: get_session(self.db, session_id))

    def resolve(
        self,
        agent_group_id: str,
        messaging_group_id: str | None,
        thread_id: str | None,
        mode: str,
        *,
        now: datetime,
    ) -> tuple[Session, bool]:
        """The active session for this key, created (folder and DBs too) when missing."""
        session, created, make = self._resolve_row(
            agent_group_id, messaging_group_id, thread_id, mode, now=now
        )
        if make or session.id in self._making:  # idempotent: waits for a maker's lock
            self._make_durably(self.paths(session))
        return session, created

    async def resolve_async(
        self,
        agent_group_id: str,
        messaging_group_id: str | None,
        thread_id: str | None,
        mode: str,
        *,
        now: datetime,
        memo: bool = True,
    ) -> tuple[Session, bool]:
        """:meth:`resolve` for the event loop: a new session's folder and DBs (schemas,
        several commits) are made in a worker thread; a second caller for the same session
        meanwhile waits for them instead of writing into a half-made folder. ``memo``
        (the router's): the lookup may come from :attr:`memo`, which the router has just
        checked."""
        session, created, make = self._resolve_row(
            agent_group_id, messaging_group_id, thread_id, mode, now=now, memo=memo
        )
        await self._make_folder(session, make)
        return session, created

    async def _make_folder(self, session: Session, make: bool) -> None:
        """Make the session's folder off the loop (``make``), or wait for a maker. The
        central DB's WAL is synced there too: the new session's row (committed on the loop
        at ``synchronous=NORMAL``) then survives a power loss before the first message is
        acknowledged; rolled back, it left that message in a folder no session names (the
        journal's replay dropped it, the chat's next message made a new session)."""
        making = self._making.get(session.id)
        if making is not None:
            await making.wait()
        elif make:
            making = self._making[session.id] = asyncio.Event()
            try:
                await asyncio.to_thread(self._make_durably, self.paths(session))
            finally:
                del self._making[session.id]
                making.set()
        if session.id not in self._present:
            keep_bounded(self._present)
            self._present.add(session.id)

    def _make_durably(self, paths: SessionPaths) -> None:
        init_session_folder(paths)
        if self.central_path is not None:
            sync_wal(self.central_path)

    def _resolve_row(
        self,
        agent_group_id: str,
        messaging_group_id: str | None,
        thread_id: str | None,
        mode: str,
        *,
        now: datetime,
        memo: bool = False,
    ) -> tuple[Session, bool, bool]:
        """The session row (created when missing), whether it was, and whether its folder
        must be made. ``memo``: the lookup may come from :attr:`memo` (a caller that has
        just checked it)."""
        if mode == "agent-shared":
            mg_key, thread_key = None, None
        elif mode == "per-thread":
            mg_key, thread_key = messaging_group_id, thread_id
        else:
            mg_key, thread_key = messaging_group_id, None

        # a read first: the session exists for nearly every message, and a write
        # transaction on the central DB per message cost more than the lookup itself
        def lookup() -> Session | None:
            return find_session(self.db, agent_group_id, mg_key, thread_key)

        found = (self.memo.get(("session", agent_group_id, mg_key, thread_key), lookup)
                 if memo else lookup())  # fmt: skip
        created = False
        if found is not None:
            session = found
        else:
            with transaction(self.db):  # find-or-create, atomic against another creator
                found = find_session(self.db, agent_group_id, mg_key, thread_key)
                if found is not None:
                    session = found
                else:
                    session = create_session(self.db, agent_group_id, mg_key, thread_key, now=now)
                    created = True
        paths = self.paths(session)
        # the router (memo) trusts a file it has seen: a stat per message on the loop was
        # ~5 % of a burst's loop time; a write that finds the file gone makes it again
        seen = memo and session.id in self._present
        make = created or (
            session.id not in self._making and not seen and not paths.inbound.exists()
        )
        if make:
            if not created:
                self._folder_remade(session.id)
            logger.info("session %s created for agent group %s", session.id, agent_group_id)
        return session, created, make

    def write_message(
        self, session: Session, row: dict[str, Any], *, now: datetime, due: str | None = None
    ) -> None:
        """Store one ``messages_in`` row (even seq; skipped when its id is there already).
        With the host's ingest the row is journaled and then written by the session's pump
        (:meth:`Ingest.post`): nothing here waits for the session's file, which its agent
        may keep locked for as long as it likes; without one (a bare manager: no host
        running) it is written here, at once."""
        if self.ingest is not None:
            self.ingest.post(session, row, now=now, due=due)
            return
        self.write_prepared(session, self.prepare_row(session, row, now), now=now, due=due)

    def write_prepared(
        self, session: Session, row: dict[str, Any], *, now: datetime, due: str | None = None
    ) -> int | None:
        """Insert one prepared row now, in a commit of its own (a bare manager; a row
        :meth:`Ingest.post` cannot journal: off the event loop, at the host's stop, the
        journal failing); None when the id exists already."""
        paths = self.paths(session)
        with self.inbound(paths) as conn:
            if conn.execute("SELECT 1 FROM messages_in WHERE id=?", (row["id"],)).fetchone():
                return None
            if due is None and session.id in self._kept:
                due = iso(now + timedelta(seconds=self.live_check_s))  # its runner wakes on
                # the commit (inotify); the sweep looks in at the next SLA check, not at once
            # indexed before it is stored: if the central write fails (a full disk) nothing
            # is stored and the sender is told; a stored row is never left out of the index
            self.work.mark(session.id, due or iso(now))
            try:
                seq = insert_message_in(conn, row, other_max=self.other_max(session.id, conn))
            except sqlite3.IntegrityError as exc:  # the id was checked just above
                raise _refused(session.id, row["id"], exc) from None
        self.touch(session.id, now)
        return seq

    async def accept(
        self, session: Session, row: dict[str, Any], *, now: datetime,
        outcome: Outcome | None = None, delayed: Delayed | None = None,
    ) -> None:  # fmt: skip
        """The router's write: returns once the row is durable, then reports its outcome
        through ``outcome`` (the seq; None when the id existed; or the error that refused
        it for good). With the host's ingest (host/ingest.py) it returns once the row is
        durable (a lone row in its file, a stream's in the journal) and the outcome
        follows; without one (a bare manager: no host) the row is written here, in a
        durable commit of its own, and the outcome heard before the return. A passing
        failure (a full disk) is raised: the sender is not acknowledged."""
        if self.ingest is not None:
            await self.ingest.accept(session, row, now=now, outcome=outcome, delayed=delayed)
            return
        res: int | BaseException | None
        try:
            [res] = await self.write_batch(session, [self.prepare_row(session, row, now)], now)
        except sqlite3.OperationalError:  # passing (a full disk): not acknowledged
            raise
        except (StoreError, sqlite3.DatabaseError) as exc:  # the file refuses it for good
            res = exc
        if outcome is not None:
            if isinstance(res, BaseException):
                await outcome(None, res)
            else:
                await outcome(res, None)

    async def settle(
        self, session_ids: list[str] | None = None, *, through_failures: bool = True,
        posted: bool = False,
    ) -> None:  # fmt: skip
        """Wait until the rows accepted so far (of these sessions; ``posted``: and of the
        sessions the host posted rows to) are in their files, or (``through_failures``)
        kept in the journal while their file fails."""
        if self.ingest is not None:
            await self.ingest.settle(session_ids, through_failures=through_failures,
                                     posted=posted)  # fmt: skip

    async def write_batch(
        self, session: Session, rows: list[dict[str, Any]], now: datetime
    ) -> list[int | BaseException | None]:
        """:meth:`write_rows` of prepared rows (the ingest pump's batch)."""
        return await self._in_folder(session, lambda: self.write_rows(session, rows, now))

    async def _in_folder(self, session: Session, write: Callable[[], Awaitable[T]]) -> T:
        """Run ``write``; a session folder deleted since the host last saw it (the router
        does not look per message) is made again, once, and ``write`` run again."""
        try:
            return await write()
        except FileNotFoundError:
            if not self.paths(session).inbound.exists():  # else made again meanwhile
                logger.warning("session %s: its folder was deleted; made again", session.id)
                if session.id not in self._making:
                    self._folder_remade(session.id)
                await self._make_folder(session, True)
            return await write()  # once more, at most

    def answered(self, session_id: str, in_reply_to: object, answers: Iterable[object]) -> None:
        """A reply of the session went out to its chat, answering ``in_reply_to`` and the
        rows ``answers`` (the ingest tells a conversation's next message from a stream)."""
        if self.ingest is not None:
            self.ingest.answered(session_id, (in_reply_to, *answers))

    def prepare_row(self, session: Session, row: dict[str, Any], now: datetime) -> dict[str, Any]:
        """A copy of ``row`` as it is stored: attachments' data written into the session's
        ``inbox/`` (their content refers to the files), ``series_id`` defaulted."""
        row = dict(row)
        if "content" in row and isinstance(row["content"], str):
            paths = self.paths(session)
            row["content"] = self.extract_attachments(paths, str(row["id"]), row["content"], now)
        row.setdefault("series_id", row["id"])
        return row

    async def drain_writes(self) -> None:
        """Wait until every row accepted and every writer job submitted so far is on disk
        (the host's stop: nothing a sender was about to hear of is left behind; journaled
        rows are written, or, when their file fails, left for the next start)."""
        if self.ingest is not None:
            await self.ingest.settle(through_failures=False)
            await self.ingest.journal.drain()
        await self.writers.drain()

    async def write_rows(
        self, session: Session, rows: list[dict[str, Any]], now: datetime
    ) -> list[int | BaseException | None]:
        """Insert prepared ``messages_in`` rows in one durable commit on the session's
        writer thread. Per row: its seq, None (the id was there) or the refusal of that row
        alone; an error of the whole commit (a full disk, a missing file) is raised."""
        known = self.known_out_max(session.id)
        sid = session.id
        carried: list[Any] = [None]  # what the ride along's apply answered (its last run)

        def insert(conn: sqlite3.Connection) -> list[int | BaseException | None]:
            """On the writer thread: one durable transaction for the batch."""
            out: list[int | BaseException | None] = []
            with transaction(conn, durable=True):
                other = known if known is not None else delivery_cursor(conn)
                top = max(max_seq(conn, "messages_in"), other)
                for row in rows:
                    seq = next_even(top)
                    try:  # one statement: a refusal leaves the batch's other rows alone
                        new = insert_message_in_if_new(conn, row, seq)
                    except sqlite3.IntegrityError as exc:  # (a row with its id is skipped)
                        out.append(_refused(sid, row["id"], exc))
                        continue
                    out.append(seq if new else None)  # None: the id was there
                    if new:
                        top = seq
                if along is not None:
                    carried[0] = along.apply(conn)
            return out

        # indexed before stored (a full central DB refuses the batch: the senders hear it)
        due = None
        if session.id in self._kept:
            due = iso(now + timedelta(seconds=self.live_check_s))
        self.work.mark(session.id, due or iso(now))
        along = self.carry(sid) if self.carry is not None else None
        try:
            results = await self.writers.call(session.id, self.paths(session), insert)
        except BaseException:
            if along is not None:
                along.undo()
            raise
        if along is not None:
            along.done(carried[0])
        if any(isinstance(r, int) for r in results):
            self.touch(session.id, now)
        return results

    def known_out_max(self, session_id: str) -> int | None:
        """The outbound side's highest seq this host has noted (read on the loop, for a
        job on the writer thread; None: :func:`delivery_cursor` there)."""
        return self._out_max.get(session_id)

    def other_max(self, session_id: str, inb: sqlite3.Connection) -> int:
        """The outbound side's highest seq as far as the host knows, without touching
        ``outbound.db``: what delivery last read, or the delivery cursor (every row at or
        below it was read). Seqs stay unique by parity; cross-table order is approximate
        only for rows the host has not read yet, as with any read made a moment earlier."""
        known = self._out_max.get(session_id)
        if known is not None:  # every cursor delivery wrote or read is noted: known >= it
            return known
        return delivery_cursor(inb)  # nothing delivered since the host started: one read

    def notify_agent(
        self, session: Session, text: str, *, now: datetime, prefix: str = "sys"
    ) -> str | None:
        """A host/system note to the agent (spec §2.10): kind chat, channel agent, trigger 1.
        At most :data:`NOTES_PER_MINUTE` a minute per session: past that it is counted, not
        written (None), and the first note of a later minute says how many were not."""
        window = self._note_window.get(session.id)
        if window is None or not timedelta(0) <= now - window[0] < NOTE_WINDOW:
            left_out = window[2] if window is not None else 0
            if window is None:
                keep_bounded(self._note_window)
            window = self._note_window[session.id] = [now, 0, 0]
            if left_out:
                window[1] += 1
                self._note(session, f"{left_out} notes to you were not written in the minute "
                            f"before (more than {NOTES_PER_MINUTE} a minute).", now, prefix)  # fmt: skip
        if window[1] >= NOTES_PER_MINUTE:
            if not window[2]:
                logger.warning("session %s: more than %d notes to its agent this minute; the "
                               "rest are counted, not written (first left out: %s)",
                               session.id, NOTES_PER_MINUTE, text[:300])  # fmt: skip
            window[2] += 1
            return None
        window[1] += 1
        return self._note(session, text, now, prefix)

    def _note(self, session: Session, text: str, now: datetime, prefix: str) -> str:
        mid = new_id(prefix, now)
        self.write_message(
            session,
            {
                "id": mid, "kind": "chat", "timestamp": iso(now),
                "platform_id": session.agent_group_id, "channel_type": "agent",
                "thread_id": None,
                "content": dumps({"text": text, "sender": "system", "senderId": "system"}),
            },
            now=now,
        )  # fmt: skip
        return mid

    def touch(self, session_id: str, now: datetime) -> None:
        """``last_active`` of the session: written at most once per
        :data:`LAST_ACTIVE_EVERY_S` (NanoClaw wrote it per message; it orders the
        dashboard and ages sessions out after days, so a second late is the same)."""
        last = self._touched.get(session_id)
        if last is not None and timedelta(0) <= now - last < LAST_ACTIVE_EVERY:
            return
        try:
            self.db.execute("UPDATE sessions SET last_active=? WHERE id=?", (iso(now), session_id))
        except sqlite3.OperationalError as exc:  # bookkeeping only: the rows are stored
            logger.warning("last_active of session %s not updated: %s", session_id, exc)
            return
        if last is None:
            keep_bounded(self._touched)
        self._touched[session_id] = now

    def extract_attachments(
        self, paths: SessionPaths, message_id: str, content: str, now: datetime
    ) -> str:
        """Decode base64 ``data`` of attachments into ``inbox/<message id>/`` (spec §3.8)."""
        return extract_attachments(paths.inbox, message_id, content, now)
