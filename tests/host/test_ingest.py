"""The ingest journal (issue 19): a routed message is acknowledged once it is durable in
``data/ingest.db``, written into its session's ``inbound.db`` right after, and removed from
the journal only then. A crash in between loses nothing: the next start writes it."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.config import Home
from carapace.db.sessions import Session
from carapace.host.ingest import BATCH_MAX, LONE_WAIT_S
from carapace.host.ingest_journal import IngestJournal, JournalClosed
from carapace.migrate.doctor import DoctorReport
from carapace.ops.doctor import journal_check
from carapace.testing.ingest import journal_rows

SRC = Path(__file__).resolve().parents[2] / "src"


async def _append(journal: IngestJournal, session_id: str, row: dict[str, Any]) -> int:
    """A row journaled as the router does it, once its commit is durable."""
    return await journal.submit(session_id, row)


def inbound_ids(rig: Rig, s: Session) -> list[str]:
    return [
        r["id"].split(":")[0] for r in rig.inbound(s, "SELECT id FROM messages_in ORDER BY seq")
    ]


def _hold_writer(rig: Rig, s: Session) -> threading.Event:
    """Hold the session's writer thread (a job that waits) until the event is set."""
    gate = threading.Event()
    paths = rig.host.sessions.paths(s)
    rig.loop.create_task(rig.host.sessions.writers.call(s.id, paths, lambda _c: gate.wait(30)))
    return gate


def _chat_session(rig: Rig, chat: str = "chan") -> Session:
    ag = rig.agent()
    rig.wire(rig.chat(chat), ag)
    rig.run(rig.host.route(make_event("first", platform_id=chat, id="m0")))
    [s] = rig.sessions()
    return s


class FailingFile:
    """The session's file fails (a full disk) while ``broken``; ``attempts`` counts tries."""

    def __init__(self, rig: Rig, monkeypatch: pytest.MonkeyPatch, retry_s: float) -> None:
        mgr = rig.host.sessions
        assert mgr.ingest is not None
        mgr.ingest.retry_first_s = retry_s
        self.broken, self.attempts = True, 0
        real = mgr.write_batch

        async def flaky(*a: Any, **kw: Any) -> Any:
            if self.broken:
                self.attempts += 1
                raise sqlite3.OperationalError("database or disk is full")
            return await real(*a, **kw)

        monkeypatch.setattr(mgr, "write_batch", flaky)


def test_a_channel_message_is_acknowledged_once_journaled_and_written_right_after(
    rig: Rig,
) -> None:
    """A channel's event (``settle=False``, the path every adapter takes) returns while the
    session's writer is still busy: the row is in the journal, not yet in inbound.db. Once
    the writer is free the row is written and leaves the journal."""
    s = _chat_session(rig)
    rig.host.sessions.ingest.lone_wait_s = 0.0  # type: ignore[union-attr]  # (a busy writer)
    rig.run(rig.host.sessions.ingest.journal.drain())  # type: ignore[union-attr]
    assert journal_rows(rig.host.home) == []  # "first" was written
    gate = _hold_writer(rig, s)
    res = rig.run(rig.host.route(make_event("second", platform_id="chan", id="m1"), settle=False))
    assert [r.message_id.split(":")[0] for r in res.routed] == ["m1"]
    assert [mid.split(":")[0] for _sid, mid in journal_rows(rig.host.home)] == ["m1"]
    assert inbound_ids(rig, s) == ["m0"]
    gate.set()
    rig.run(rig.host.sessions.settle())
    rig.run(rig.host.sessions.ingest.journal.drain())  # type: ignore[union-attr]
    assert inbound_ids(rig, s) == ["m0", "m1"]
    assert journal_rows(rig.host.home) == []


def _failing_journal(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every journal commit fails from now on (a full disk under ``data/``)."""
    journal = rig.host.sessions.ingest.journal  # type: ignore[union-attr]

    def submit(_sid: str, _row: dict[str, Any]) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_exception(sqlite3.OperationalError("database or disk is full (journal)"))
        return fut

    monkeypatch.setattr(journal, "submit", submit)


def _start_journal(rig: Rig, journal: IngestJournal) -> None:
    """Have the journal's thread running and idle (a removal of no row starts it)."""
    journal.remove([-1])
    rig.run(journal.drain())


def test_an_idle_chats_message_is_written_into_its_file_without_the_journal(
    rig: Rig,
) -> None:
    """The round trip's path: a message for a session with nothing queued is written into
    its ``inbound.db`` at once and acknowledged when that commit is durable; the journal
    is not used at all (no row to write, sync and remove). With every journal commit
    held, the row still reaches the file and the sender is acknowledged."""
    s = _chat_session(rig)
    journal = rig.host.sessions.ingest.journal  # type: ignore[union-attr]
    _start_journal(rig, journal)
    submitted = _count_submits(journal)
    journal._lock.acquire()  # a journal commit would wait for this
    try:
        res = rig.run(asyncio.wait_for(rig.host.route(
            make_event("quick", platform_id="chan", id="q1"), settle=False), 30))  # fmt: skip
        assert [r.message_id.split(":")[0] for r in res.routed] == ["q1"]
        assert inbound_ids(rig, s) == ["m0", "q1"]
    finally:
        journal._lock.release()
    rig.run(journal.drain())
    assert submitted == [] and journal_rows(rig.host.home) == []


def _count_submits(journal: IngestJournal) -> list[str]:
    """The message ids journaled from now on, in order."""
    submitted: list[str] = []
    real = journal.submit

    def counting(sid: str, row: dict[str, Any]) -> asyncio.Future[int]:
        submitted.append(str(row["id"]).split(":")[0])
        return real(sid, row)

    journal.submit = counting  # type: ignore[method-assign]
    return submitted


def test_a_lone_row_whose_file_is_slow_is_journaled_and_acknowledged_from_there(
    rig: Rig,
) -> None:
    """A lone row's file commit that takes longer than ``lone_wait_s`` (a lock held, a busy
    disk): the row is journaled as well and the sender acknowledged once that commit is
    durable, so one slow session file never holds a channel's events back. Written later,
    it leaves the journal."""
    s = _chat_session(rig)
    ingest = rig.host.sessions.ingest
    assert ingest is not None
    ingest.lone_wait_s = 0.0
    gate = _hold_writer(rig, s)
    try:
        res = rig.run(asyncio.wait_for(rig.host.route(
            make_event("slow", platform_id="chan", id="w1"), settle=False), 30))  # fmt: skip
        assert [r.message_id.split(":")[0] for r in res.routed] == ["w1"]
        assert [mid.split(":")[0] for _sid, mid in journal_rows(rig.host.home)] == ["w1"]
        assert inbound_ids(rig, s) == ["m0"]
    finally:
        gate.set()
    rig.run(rig.host.sessions.settle())
    rig.run(ingest.journal.drain())
    rig.run(ingest.journal.drain())  # (the removal is queued once the append has its number)
    assert inbound_ids(rig, s) == ["m0", "w1"]
    assert journal_rows(rig.host.home) == []


def test_an_agent_holding_a_read_lock_on_inbound_db_does_not_hold_back_the_ack(
    rig: Rig,
) -> None:
    """A hostile runner keeps a read transaction open on its ``inbound.db`` (it may read
    that file), so the host's commit waits for the lock. The sender is acknowledged from
    the journal after ``lone_wait_s`` anyway (a channel's other chats are not held up),
    and the row reaches the file once the lock is let go."""
    s = _chat_session(rig)
    # no runner of the host's: its start and exit read and write inbound.db on their own
    rig.run(rig.host.pool.stop_all("test"))
    rig.settle()
    rig.host.sessions.ingest.lone_wait_s = LONE_WAIT_S  # type: ignore[union-attr]
    agent = sqlite3.connect(str(rig.host.sessions.paths(s).inbound))
    agent.execute("BEGIN")
    agent.execute("SELECT COUNT(*) FROM messages_in").fetchone()  # a shared lock, kept
    try:
        res = rig.run(asyncio.wait_for(rig.host.route(
            make_event("held", platform_id="chan", id="h1"), settle=False), 4))  # fmt: skip
        assert [r.message_id.split(":")[0] for r in res.routed] == ["h1"]
        assert [mid.split(":")[0] for _sid, mid in journal_rows(rig.host.home)] == ["h1"]
    finally:
        agent.rollback()
        agent.close()
    rig.run(rig.host.sessions.settle(through_failures=False))
    assert inbound_ids(rig, s) == ["m0", "h1"]


def _paced(rig: Rig) -> tuple[Session, list[float], list[str], Callable[[str], str]]:
    """A chat's session with the stream rule on (``lone_gap_s`` 5 ms) and the ingest's clock
    in the test's hands (``now``); the message ids journaled from now on; and a route of
    one message, settled, that gives its row's id in ``inbound.db``."""
    s = _chat_session(rig)
    ingest = rig.host.sessions.ingest
    assert ingest is not None
    ingest.lone_gap_s = 0.005
    now = [time.monotonic() + 60.0]  # (after the first message's time, whatever it was)
    ingest.monotonic = lambda: now[0]
    _start_journal(rig, ingest.journal)
    submitted = _count_submits(ingest.journal)

    def route(mid: str) -> str:
        rig.run(rig.host.route(make_event(mid, platform_id="chan", id=mid), settle=False))
        rig.run(rig.host.sessions.settle())
        [row] = rig.inbound(s, f"SELECT id FROM messages_in WHERE id LIKE '{mid}%'")
        return str(row["id"])

    return s, now, submitted, route


def test_rows_close_together_are_a_stream_and_go_through_the_journal(rig: Rig) -> None:
    """``lone_gap_s``: a row that comes within it of its session's last row is part of a
    stream (a channel handing over events one at a time): acknowledged once journaled,
    written with the rows around it, not one durable file commit per row. A row after a
    quiet spell is lone again."""
    s, now, submitted, route = _paced(rig)
    route("a")  # quiet before: lone
    now[0] += 0.001
    route("b")  # 1 ms later: a stream
    now[0] += 0.001
    route("c")
    now[0] += 1.0
    route("d")  # after a quiet second: lone
    assert submitted == ["b", "c"]
    assert inbound_ids(rig, s) == ["m0", "a", "b", "c", "d"]


def test_the_next_message_of_a_conversation_is_lone_however_soon_it_comes(rig: Rig) -> None:
    """A conversation is not a stream: a client that sends its next message as soon as the
    reply to its last one is out (a script, a bot, another agent's channel) has it written
    as a lone row, one durable commit and no journal, even 1 ms after its last row. A row
    whose session's last row is still unanswered (a reply to an older row does not count)
    is part of a stream, as before."""
    s, now, submitted, route = _paced(rig)

    def answer(row_id: str, **content: Any) -> None:
        rig.reply(s, {"text": "ok", **content}, channel_type="fake", platform_id="chan",
                  in_reply_to=row_id)  # fmt: skip
        assert rig.run(rig.host.deliver_once(s.id)) == 1

    a = route("a")  # quiet before: lone
    answer(a)
    now[0] += 0.001
    b = route("b")  # 1 ms after a, whose answer is out: lone
    now[0] += 0.001
    route("c")  # 1 ms after b, which is not answered: a stream
    answer(b)  # an answer to b, not to the last row
    now[0] += 0.001
    d = route("d")  # still a stream
    answer("x", answers=[d])  # a batch's reply names every row it answers
    now[0] += 0.001
    route("e")  # lone
    assert submitted == ["c", "d"]
    assert inbound_ids(rig, s) == ["m0", "a", "b", "c", "d", "e"]


def test_another_sessions_agent_naming_a_rows_id_does_not_change_how_it_is_written(
    rig: Rig,
) -> None:
    """An agent's reply names the rows it answers (``in_reply_to``, ``answers``): words of
    the agent's, heard for its own session only. Another session's agent naming this
    session's last row in its own reply leaves this session's next row a stream's."""
    s, now, submitted, route = _paced(rig)
    ag2 = rig.agent("ag2")
    rig.wire(rig.chat("other"), ag2)
    rig.run(rig.host.route(make_event("hi", platform_id="other", id="o0")))
    [other] = [x for x in rig.sessions() if x.id != s.id]
    a = route("a")
    rig.reply(other, {"text": "not yours", "answers": [a]}, channel_type="fake",
              platform_id="other", in_reply_to=a)  # fmt: skip
    assert rig.run(rig.host.deliver_once(other.id)) == 1
    now[0] += 0.001
    route("b")  # 1 ms after a, which its own agent has not answered: a stream
    assert submitted == ["b"]


def test_a_row_that_finds_the_queue_empty_still_waits_behind_rows_being_journaled(
    rig: Rig,
) -> None:
    """Arrival order survives the two paths: B came while the session's pump was busy, so
    it joins the queue after its journal commit; C comes once the pump is done but while
    B's journal commit still runs. C must not go to the file first."""
    s = _chat_session(rig)
    ingest = rig.host.sessions.ingest
    assert ingest is not None
    journal = ingest.journal
    _start_journal(rig, journal)

    def route(mid: str) -> Any:
        return rig.host.route(make_event(mid, platform_id="chan", id=mid), settle=False)

    async def until(cond: Any) -> None:
        for _ in range(100_000):
            if cond():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition not reached")

    async def scenario() -> None:
        gate = _hold_writer(rig, s)  # A's write waits: its pump is busy
        journal._lock.acquire()  # every journal commit waits
        try:
            a = asyncio.ensure_future(route("A"))
            await until(lambda: s.id in ingest._pumps)
            b = asyncio.ensure_future(route("B"))  # the pump is busy: B waits for its journal
            await until(lambda: ingest._journaling.get(s.id))
            gate.set()
            await asyncio.wait_for(a, 30)  # A is in the file; the pump has nothing more
            await until(lambda: s.id not in ingest._pumps)
            c = asyncio.ensure_future(route("C"))
            for _ in range(200):  # (time for C to be written, were it allowed to)
                await asyncio.sleep(0)
        finally:
            journal._lock.release()
        await asyncio.wait_for(asyncio.gather(b, c), 30)
        await rig.host.sessions.settle()

    rig.run(scenario())
    assert inbound_ids(rig, s) == ["m0", "A", "B", "C"]


def test_a_row_its_file_took_is_acknowledged_though_the_journal_failed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _chat_session(rig)
    _failing_journal(rig, monkeypatch)
    res = rig.run(rig.host.route(make_event("m1", platform_id="chan", id="m1"), settle=False))
    assert [r.message_id.split(":")[0] for r in res.routed] == ["m1"]
    assert inbound_ids(rig, s) == ["m0", "m1"]


def test_a_row_in_neither_the_journal_nor_its_file_is_refused_and_never_written_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both commits fail (the disk is full): the route raises, so the channel does not
    acknowledge the message and its platform sends it again; the host does not keep a copy
    that would be written later (a second copy once the platform re-sends it), nor tell the
    sender it is kept."""
    s = _chat_session(rig)
    failing = FailingFile(rig, monkeypatch, retry_s=3600.0)
    _failing_journal(rig, monkeypatch)
    before = len(rig.channel.deliveries)
    with pytest.raises(sqlite3.OperationalError, match="journal"):
        rig.run(asyncio.wait_for(rig.host.route(
            make_event("lost", platform_id="chan", id="x1"), settle=False), 30))  # fmt: skip
    assert failing.attempts == 1
    monkeypatch.undo()  # the disk has room again
    rig.run(rig.host.route(make_event("next", platform_id="chan", id="x2")))
    assert inbound_ids(rig, s) == ["m0", "x2"]
    assert rig.channel.deliveries[before:] == []


def test_the_journal_file_is_private_and_never_opened_through_a_link(tmp_path: Path) -> None:
    path = tmp_path / "ingest.db"
    journal = IngestJournal(path)

    async def two() -> list[int]:
        return [await journal.submit("s1", {"id": "a"}), await journal.submit("s1", {"id": "b"})]

    ns = asyncio.run(two())
    assert ns[0] < ns[1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [(n, sid, row["id"]) for n, sid, row in journal.pending()] == [
        (ns[0], "s1", "a"), (ns[1], "s1", "b")
    ]  # fmt: skip
    journal.remove([ns[0]])
    asyncio.run(journal.drain())
    assert [row["id"] for _n, _s, row in journal.pending()] == ["b"]
    journal.remove([ns[1]])  # committed by the close (removals wait for company)
    journal.close()
    assert IngestJournal(path).pending() == []
    with pytest.raises(JournalClosed):
        asyncio.run(_append(journal, "s1", {"id": "c"}))

    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"")
    link = tmp_path / "link" / "ingest.db"
    link.parent.mkdir()
    link.symlink_to(target)
    with pytest.raises(OSError):
        IngestJournal(link).pending()
    assert target.read_bytes() == b""  # nothing written through the link


def test_a_journaled_row_that_does_not_decode_is_dropped_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = IngestJournal(tmp_path / "ingest.db")
    asyncio.run(_append(journal, "s1", {"id": "good"}))
    conn = sqlite3.connect(tmp_path / "ingest.db")
    conn.execute("INSERT INTO pending (session_id, row) VALUES ('s1', 'not json')")
    conn.execute("INSERT INTO pending (session_id, row) VALUES ('s1', '[1, 2]')")
    conn.commit()
    conn.close()
    with caplog.at_level(logging.ERROR):
        assert [row["id"] for _n, _s, row in journal.pending()] == ["good"]
    assert sum("does not decode" in r.message for r in caplog.records) == 2
    asyncio.run(journal.drain())
    assert len(journal.pending()) == 1
    journal.close()


def test_a_passing_failure_keeps_the_rows_journaled_and_in_order_until_it_ends(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk on the session's file: the sender was acknowledged (the row is in the
    journal); the pump tries again, and the rows acknowledged meanwhile follow in order."""
    s = _chat_session(rig)
    mgr = rig.host.sessions
    failing = FailingFile(rig, monkeypatch, retry_s=0.0)

    async def three() -> None:
        for i in (1, 2, 3):
            await rig.host.route(make_event(f"m{i}", platform_id="chan", id=f"m{i}"), settle=False)
        while failing.attempts < 5:  # the pump keeps trying
            await asyncio.sleep(0)
        assert [m.split(":")[0] for _s, m in journal_rows(rig.host.home)] == ["m1", "m2", "m3"]
        failing.broken = False
        await mgr.settle(through_failures=False)
        await mgr.ingest.journal.drain()  # type: ignore[union-attr]

    rig.run(three())
    assert inbound_ids(rig, s) == ["m0", "m1", "m2", "m3"]
    assert journal_rows(rig.host.home) == []


def test_a_route_that_waits_for_its_rows_does_not_wait_out_a_failing_file(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Host.route`` (webhooks, admin) waits until its rows are in their files, but not
    while the file fails: the row is durable in the journal, the route returns (a webhook
    answers 202), and the row is written when the file works again."""
    s = _chat_session(rig)
    failing = FailingFile(rig, monkeypatch, retry_s=3600.0)
    res = rig.run(asyncio.wait_for(
        rig.host.route(make_event("w1", platform_id="chan", id="w1")), 30))  # fmt: skip
    assert [r.message_id.split(":")[0] for r in res.routed] == ["w1"]
    assert [m.split(":")[0] for _s, m in journal_rows(rig.host.home)] == ["w1"]
    assert inbound_ids(rig, s) == ["m0"]
    failing.broken = False
    rig.run(rig.host.route(make_event("w2", platform_id="chan", id="w2")))  # a new try
    assert inbound_ids(rig, s) == ["m0", "w1", "w2"]


def test_routes_waiting_together_all_return_when_the_file_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several ``Host.route`` calls (two webhook requests) wait for the same failing file:
    each returns, not only the last one to start waiting."""
    s = _chat_session(rig)
    FailingFile(rig, monkeypatch, retry_s=3600.0)

    async def two() -> list[Any]:
        return list(
            await asyncio.gather(
                *(rig.host.route(make_event(m, platform_id="chan", id=m)) for m in ("x1", "x2"))
            )
        )

    results = rig.run(asyncio.wait_for(two(), 30))
    assert [r.routed[0].message_id.split(":")[0] for r in results] == ["x1", "x2"]
    assert inbound_ids(rig, s) == ["m0"]


def test_the_chats_next_message_is_a_new_try_and_the_sender_hears_once_it_is_kept(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a session's file fails, its pump waits (a long back-off here); a new message
    of the session wakes it for a try at once. The first sender held back is told once
    that the message is kept; further tries of the same failure say nothing more."""
    s = _chat_session(rig)
    mgr = rig.host.sessions
    failing = FailingFile(rig, monkeypatch, retry_s=3600.0)
    before = len(rig.channel.deliveries)

    async def scenario() -> None:
        await rig.host.route(make_event("m1", platform_id="chan", id="m1"), settle=False)
        while failing.attempts < 1:
            await asyncio.sleep(0)
        await rig.host.route(make_event("m2", platform_id="chan", id="m2"), settle=False)
        while failing.attempts < 2:  # a try at once, not in an hour
            await asyncio.sleep(0)
        failing.broken = False
        await rig.host.route(make_event("m3", platform_id="chan", id="m3"), settle=False)
        await asyncio.wait_for(mgr.settle(through_failures=False), 30)

    rig.run(scenario())
    assert inbound_ids(rig, s) == ["m0", "m1", "m2", "m3"]
    notices = [d.content["text"] for d in rig.channel.deliveries[before:]]
    assert len(notices) == 1 and "Your message is kept" in notices[0], notices
    assert "disk is full" in notices[0]


def test_rows_refused_for_good_leave_the_journal_and_the_sender_hears_it(rig: Rig) -> None:
    """A planted trigger refuses one row: it is not retried (it would hold up the chat),
    it leaves the journal, the sender is told, and the next row is written."""
    s = _chat_session(rig)
    paths = rig.host.sessions.paths(s)
    rig.host.sessions.release_all()
    rig.run(rig.host.sessions.writers.drain())
    with sqlite3.connect(paths.inbound) as conn:
        conn.execute(
            "CREATE TRIGGER hostile BEFORE INSERT ON messages_in WHEN NEW.id LIKE 'bad%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a planted trigger'); END"
        )
    conn.close()
    rig.host.sessions.writers.forget(s.id)
    before = len(rig.channel.deliveries)

    async def two() -> None:
        await rig.host.route(make_event("no", platform_id="chan", id="bad1"), settle=False)
        await rig.host.route(make_event("yes", platform_id="chan", id="ok1"), settle=False)
        await rig.host.sessions.settle()
        await rig.host.sessions.ingest.journal.drain()  # type: ignore[union-attr]

    rig.run(two())
    assert inbound_ids(rig, s) == ["m0", "ok1"]
    assert journal_rows(rig.host.home) == []
    [notice] = rig.channel.deliveries[before:]
    assert "could not be stored" in notice.content["text"]


def test_a_stop_during_a_failure_keeps_the_rows_for_the_next_start(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The host stops while a session's file keeps failing: the stop does not wait out the
    back-off, the rows stay journaled, and the next host on the home writes them at start."""
    s = _chat_session(rig)
    mgr = rig.host.sessions
    assert mgr.ingest is not None
    mgr.ingest.retry_first_s = 3600.0  # a stop must not wait for this

    async def failing(*_a: Any, **_kw: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(mgr, "write_batch", failing)
    rig.run(rig.host.route(make_event("kept", platform_id="chan", id="k1"), settle=False))
    rig.run(asyncio.wait_for(rig.host.stop(), 30))
    assert [mid.split(":")[0] for _sid, mid in journal_rows(rig.host.home)] == ["k1"]
    # started while the file still fails: the host comes up all the same, the row waits
    rig.run(asyncio.wait_for(rig.host.start(background=False), 30))
    assert [mid.split(":")[0] for _sid, mid in journal_rows(rig.host.home)] == ["k1"]
    assert inbound_ids(rig, s) == ["m0"]
    rig.run(asyncio.wait_for(rig.host.stop(), 30))
    monkeypatch.undo()
    rig.run(rig.host.start(background=False))  # the same home, started again
    assert inbound_ids(rig, s) == ["m0", "k1"]
    rig.run(rig.host.sessions.ingest.journal.drain())  # type: ignore[union-attr]
    assert journal_rows(rig.host.home) == []


def test_a_start_reads_the_journal_back_a_batch_at_a_time_in_order(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The host died with rows journaled and not yet written (here: its file failing). The
    next start queues them by number only, never loading the journal whole (it may have
    grown long while a session's file was locked); each pump reads its rows back a batch
    at a time and writes them in their order. A row the journal no longer gives back
    cannot be written: it is logged and skipped, and the rows after it still go."""
    s = _chat_session(rig)
    mgr = rig.host.sessions
    ingest = mgr.ingest
    assert ingest is not None
    ingest.retry_first_s = 3600.0

    async def failing(*_a: Any, **_kw: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(mgr, "write_batch", failing)
    n = BATCH_MAX + 44
    for i in range(n):
        rig.run(rig.host.route(make_event(f"k{i}", platform_id="chan", id=f"k{i}"),
                               settle=False))  # fmt: skip
    rig.run(asyncio.wait_for(rig.host.stop(), 30))
    monkeypatch.undo()
    journal = ingest.journal
    numbers = {row["id"].split(":")[0]: n for n, _sid, row in journal.pending()}
    real_rows = journal.rows
    asked: list[list[int]] = []

    def rows(ns: list[int]) -> dict[int, dict[str, Any]]:
        asked.append(list(ns))
        return {n: r for n, r in real_rows(ns).items() if n != numbers["k20"]}

    def whole() -> None:
        raise AssertionError("the start loaded the whole journal")

    monkeypatch.setattr(journal, "rows", rows)
    monkeypatch.setattr(journal, "pending", whole)
    with caplog.at_level(logging.ERROR):
        rig.run(rig.host.start(background=False))
        rig.run(asyncio.wait_for(ingest.settle(through_failures=False), 30))
    assert inbound_ids(rig, s) == ["m0"] + [f"k{i}" for i in range(n) if i != 20]
    assert [len(part) for part in asked] == [BATCH_MAX, n - BATCH_MAX]
    assert sorted(x for part in asked for x in part) == sorted(numbers.values())
    assert any("could not be read back" in r.message for r in caplog.records)
    rig.run(journal.drain())
    assert journal_rows(rig.host.home) == []


def test_a_journaled_row_already_in_its_file_is_not_written_twice_at_start(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The host died after a row's file commit and before its journal row was removed (with
    a lone message's two commits side by side, either may end first): the next start finds
    the row in the file, writes nothing, wakes nobody for it, and empties the journal."""
    s = _chat_session(rig)
    journal = rig.host.sessions.ingest.journal  # type: ignore[union-attr]
    [stored] = rig.inbound(s, "SELECT * FROM messages_in")
    rig.run(_append(journal, s.id, dict(stored)))  # as left by a host killed in between
    rig.run(rig.host.stop())
    assert [mid for _sid, mid in journal_rows(rig.host.home)] == [stored["id"]]
    with caplog.at_level(logging.WARNING):
        rig.run(rig.host.start(background=False))
    assert inbound_ids(rig, s) == ["m0"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # not "refused"
    rig.run(journal.drain())
    assert journal_rows(rig.host.home) == []


def test_a_journaled_row_of_a_session_that_is_gone_is_dropped_at_start(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    journal = rig.host.sessions.ingest.journal  # type: ignore[union-attr]
    rig.run(_append(journal, "sess-nonexistent", {"id": "orphan:x", "kind": "chat"}))
    rig.run(rig.host.stop())
    with caplog.at_level(logging.ERROR):
        rig.run(rig.host.start(background=False))
    assert any("no longer exists" in r.message for r in caplog.records)
    rig.run(journal.drain())
    assert journal_rows(rig.host.home) == []


def test_an_unreadable_journal_is_set_aside_and_the_host_starts(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal that is not a database any more (a damaged disk) must not keep the host
    down: it is moved aside, named in an error, and a new one takes its place."""
    s = _chat_session(rig)
    rig.run(rig.host.stop())
    rig.host.sessions.ingest.journal.close()  # type: ignore[union-attr]
    path = rig.host.home.ingest_journal
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 400)
    journal = IngestJournal(path)
    rig.host.sessions.ingest.journal = journal  # type: ignore[union-attr]
    with caplog.at_level(logging.ERROR):
        rig.run(asyncio.wait_for(rig.host.start(background=False), 30))
    assert any("cannot be read" in r.message for r in caplog.records)
    aside = Path(f"{path}.unreadable-1")
    assert aside.read_bytes().startswith(b"this is not a database")
    rig.run(rig.host.route(make_event("after", platform_id="chan", id="m9")))
    assert inbound_ids(rig, s) == ["m0", "m9"]
    report = DoctorReport(str(rig.host.home.root))
    journal_check(rig.host.home, report)
    assert [f.code for f in report.findings] == ["ingest-journal-set-aside"]


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading
    from pathlib import Path
    from carapace.bench.host_benches import SinkChannel, event, make_host
    from carapace.config import Home
    from carapace.testing.ingest import journal_rows

    async def main():
        host = make_host(Home.resolve(Path(sys.argv[1])), SinkChannel(), runners=False)
        await host.start(background=False)
        first = await host.route(event("before"))  # the session and its files exist
        for _ in range(1000):  # and its journal row removed (the removal is submitted when
            await host.sessions.ingest.journal.drain()  # its journal commit ends, which may
            if not journal_rows(host.home):  # be after the route returned)
                break
            await asyncio.sleep(0.01)
        session = host.sessions.get(first.routed[0].session_id)
        gate = threading.Event()  # the session's writer never gets to the next row
        asyncio.ensure_future(host.sessions.writers.call(
            session.id, host.sessions.paths(session), lambda _c: gate.wait()))
        await asyncio.sleep(0)
        acked = await host.route(event("acknowledged, then the host died"), settle=False)
        print(session.id, acked.routed[0].message_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


def test_a_message_acknowledged_before_a_crash_is_written_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A real host process is SIGKILLed after it acknowledged a message that its session's
    writer had not written yet. The next host on the home finds it in the journal and
    writes it into the session's inbound.db before anything else runs."""
    from carapace.bench.host_benches import SinkChannel, make_host

    home_dir = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(home_dir)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    sid, mid = proc.stdout.split()
    home = Home.resolve(home_dir)
    assert journal_rows(home) == [(sid, mid)]
    host = make_host(home, SinkChannel(), runners=False)

    async def restart() -> list[str]:
        await host.start(background=False)
        try:
            session = host.sessions.get(sid)
            assert session is not None
            with sqlite3.connect(host.sessions.paths(session).inbound) as conn:
                ids = [r[0] for r in conn.execute("SELECT id FROM messages_in ORDER BY seq")]
            conn.close()
            await host.sessions.ingest.journal.drain()  # type: ignore[union-attr]
            return ids
        finally:
            await host.stop()
            host.close()

    report = DoctorReport(str(home.root))
    journal_check(home, report)  # no host runs: doctor says the message is waiting
    [finding] = report.findings
    assert finding.code == "ingest-journal" and finding.message.startswith("1 acknowledged")
    ids = asyncio.run(restart())
    assert ids[-1] == mid and len(ids) == 2
    assert journal_rows(home) == []
    report = DoctorReport(str(home.root))
    journal_check(home, report)
    assert report.findings == []


def test_a_note_whose_journal_commit_fails_is_written_directly(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the host posts (a note to the agent) is journaled first; when that commit
    fails (a full disk for the host's data), it is written into the session's file at
    once instead of being lost."""
    s = _chat_session(rig)
    journal = rig.host.sessions.ingest.journal  # type: ignore[union-attr]

    def failing(_sid: str, _row: Any) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = rig.loop.create_future()
        fut.set_exception(sqlite3.OperationalError("database or disk is full"))
        return fut

    monkeypatch.setattr(journal, "submit", failing)

    async def post() -> None:
        rig.host.sessions.notify_agent(s, "told all the same", now=rig.clock.now())
        await rig.host.sessions.settle()

    rig.run(post())
    texts = [r["content"] for r in rig.inbound(s, "SELECT content FROM messages_in")]
    assert any("told all the same" in t for t in texts)


def test_the_journal_file_is_made_where_mknod_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's file is made with ``mknod`` (never opened by hand: closing a descriptor
    would drop this process's locks on it); a file system that refuses ``mknod`` gets it
    from an exclusive open instead, mode 0600, and a link in its place is still refused."""
    import errno

    from carapace.host.ingest_journal import open_journal

    def refused(*a: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refused)
    conn = open_journal(tmp_path / "ingest.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    finally:
        conn.close()
    assert stat.S_IMODE(os.stat(tmp_path / "ingest.db").st_mode) == 0o600
    conn = open_journal(tmp_path / "ingest.db")  # there already: opened as it is
    conn.close()
    target = tmp_path / "elsewhere.db"
    (tmp_path / "link.db").symlink_to(target)
    with pytest.raises(OSError):
        open_journal(tmp_path / "link.db")
    assert not target.exists()  # nothing made through the link
