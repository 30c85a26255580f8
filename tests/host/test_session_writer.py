"""Issue 19: session-DB commits run on writer threads, off the event loop. One session's
writes keep their order across the thread hop, a failed commit (a full disk) reaches every
caller with nothing stored, and a stop drains what was submitted."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from host_rig import Rig

from carapace.bootstrap import init_home, open_home
from carapace.config import Home
from carapace.db import groups
from carapace.db.session import init_session_folder
from carapace.db.sessions import Session, create_session
from carapace.host import sessions as sessions_mod
from carapace.host.session_writer import SessionWriters, WritersClosed
from carapace.host.sessions import SessionManager

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Env:
    mgr: SessionManager
    session: Session


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    home = Home(tmp_path / "home")
    init_home(home)
    db, _ = open_home(home)
    mgr = SessionManager(home, db)
    ag = groups.list_agent_groups(db)[0].id
    session = create_session(db, ag, None, "t")
    init_session_folder(mgr.paths(session))
    try:
        yield Env(mgr, session)
    finally:
        mgr.writers.close()
        db.close()


def _row(mid: str) -> dict[str, Any]:
    return {"id": mid, "kind": "chat", "timestamp": "2026-01-01T00:00:00Z",
            "platform_id": "p", "channel_type": "cli", "content": '{"text": "x"}'}  # fmt: skip


async def _write(mgr: SessionManager, s: Session, row: dict[str, Any]) -> int | None:
    """One row through the ingest pump's write (``write_batch``): its seq."""
    [res] = await mgr.write_batch(s, [mgr.prepare_row(s, row, NOW)], NOW)
    assert not isinstance(res, BaseException), res
    return res


def _stored(env: Env) -> list[tuple[str, int]]:
    """``(id, seq)`` of messages_in, read with a fresh connection (what is on disk)."""
    conn = sqlite3.connect(env.mgr.paths(env.session).inbound)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, seq FROM messages_in ORDER BY seq")]
    finally:
        conn.close()


def _hold(writers: SessionWriters, sid: str, env: Env) -> tuple[threading.Event, Any]:
    """Block the session's writer thread until the event is set (rows pile up meanwhile)."""
    gate, entered = threading.Event(), threading.Event()

    def wait(conn: sqlite3.Connection) -> str:
        entered.set()
        gate.wait()
        return threading.current_thread().name

    task = asyncio.ensure_future(writers.call(sid, env.mgr.paths(env.session), wait))
    return gate, (task, entered)


def test_one_sessions_writes_keep_their_order_across_the_thread(env: Env) -> None:
    """Rows written while earlier commits are in flight land in later commits; the seqs
    follow the order the callers wrote in, and the commits ran on a writer thread."""
    mgr, s = env.mgr, env.session

    async def go() -> tuple[list[int | None], str]:
        gate, (held, entered) = _hold(mgr.writers, s.id, env)
        await asyncio.to_thread(entered.wait)
        first = [asyncio.ensure_future(_write(mgr, s, _row(f"a{i}")))
                 for i in range(5)]  # fmt: skip
        await asyncio.sleep(0)  # the first group is taken (queued behind the held job)
        second = [asyncio.ensure_future(_write(mgr, s, _row(f"b{i}")))
                  for i in range(5)]  # fmt: skip
        gate.set()
        seqs = await asyncio.gather(*first, *second)
        return list(seqs), await held

    seqs, thread_name = asyncio.run(go())
    assert thread_name.startswith("carapace-writer-")
    assert thread_name != threading.current_thread().name
    assert all(isinstance(q, int) for q in seqs)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [mid for mid, _ in _stored(env)] == [f"a{i}" for i in range(5)] + [
        f"b{i}" for i in range(5)
    ]


def test_jobs_of_one_session_run_in_submission_order(env: Env) -> None:
    """Jobs of one session (router groups, delivery outcomes) run one after another in the
    order submitted, whatever thread serves other sessions."""
    writers = SessionWriters(threads=3)
    seen: list[int] = []

    def job(i: int) -> Any:
        def run(conn: sqlite3.Connection) -> int:
            seen.append(i)
            return i

        return run

    async def go() -> list[int]:
        paths = env.mgr.paths(env.session)
        return list(await asyncio.gather(*(writers.call(env.session.id, paths, job(i))
                                           for i in range(50))))  # fmt: skip

    try:
        assert asyncio.run(go()) == list(range(50))
        assert seen == list(range(50))
    finally:
        writers.close()


def test_a_failed_commit_reaches_every_caller_and_stores_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-batch: the whole commit rolls back and the error reaches the caller
    (the ingest pump: every row of the batch stays journaled, none is reported stored),
    and the next write, once the disk has room again, goes through."""
    mgr, s = env.mgr, env.session
    real = sessions_mod.insert_message_in_if_new
    calls = 0

    def full_on_second(conn: sqlite3.Connection, row: dict[str, Any], seq: int) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real(conn, row, seq)

    monkeypatch.setattr(sessions_mod, "insert_message_in_if_new", full_on_second)

    rows = [mgr.prepare_row(s, _row(f"m{i}"), NOW) for i in range(3)]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        asyncio.run(mgr.write_batch(s, rows, NOW))  # one commit: every row's caller hears it
    assert calls == 2  # one batch: the first row was inserted, then rolled back
    assert _stored(env) == []
    monkeypatch.setattr(sessions_mod, "insert_message_in_if_new", real)
    assert isinstance(asyncio.run(_write(mgr, s, _row("later"))), int)
    assert [mid for mid, _ in _stored(env)] == ["later"]


def test_a_failed_commit_fails_the_route_so_the_channel_does_not_acknowledge(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router re-raises an operational error (the channel retries; it acknowledges only
    a route that returned). Here: the error crosses the thread back to the caller."""

    def full(conn: sqlite3.Connection, row: dict[str, Any], seq: int) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sessions_mod, "insert_message_in_if_new", full)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        asyncio.run(_write(env.mgr, env.session, _row("x")))
    assert _stored(env) == []


def test_stop_drains_pending_writes(env: Env) -> None:
    """Writes submitted before a stop are on disk when ``drain_writes`` returns, even those
    still waiting behind a commit in flight; ``close`` then ends the threads, and a write
    after that is refused (not silently dropped)."""
    mgr, s = env.mgr, env.session

    async def go() -> list[asyncio.Future[int | None]]:
        gate, (held, entered) = _hold(mgr.writers, s.id, env)
        await asyncio.to_thread(entered.wait)
        pending = [asyncio.ensure_future(_write(mgr, s, _row(f"m{i}")))
                   for i in range(4)]  # fmt: skip
        await asyncio.sleep(0)
        assert _stored(env) == []  # all still waiting behind the held job
        draining = asyncio.ensure_future(mgr.drain_writes())
        await asyncio.sleep(0)
        assert not draining.done()
        gate.set()
        await draining
        assert [mid for mid, _ in _stored(env)] == [f"m{i}" for i in range(4)]
        await held
        return pending

    pending = asyncio.run(go())
    assert all(isinstance(f.result(), int) for f in pending)
    mgr.writers.close()
    with pytest.raises(WritersClosed):
        asyncio.run(_write(mgr, s, _row("late")))
    assert "late" not in [mid for mid, _ in _stored(env)]


def test_close_runs_queued_jobs_before_ending_the_threads(env: Env) -> None:
    """``close`` (the host's last step) runs what is queued before the threads end."""
    writers = SessionWriters(threads=1)
    gate = threading.Event()
    ran: list[str] = []
    paths = env.mgr.paths(env.session)

    async def submit() -> None:
        loop = asyncio.get_running_loop()
        submitted = []
        for name in ("held", "queued-1", "queued-2"):

            def job(conn: sqlite3.Connection, name: str = name) -> None:
                if name == "held":
                    gate.wait()
                ran.append(name)

            submitted.append(asyncio.ensure_future(writers.call(env.session.id, paths, job)))
        await asyncio.sleep(0)  # submitted; nobody awaits them
        assert loop.is_running() and not any(f.done() for f in submitted)

    asyncio.run(submit())
    closer = threading.Thread(target=writers.close)
    closer.start()
    gate.set()
    closer.join()
    assert ran == ["held", "queued-1", "queued-2"]


def test_delivery_keeps_its_cursor_and_reads_a_remade_file_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivery writes the cursor itself, so it reads it from inbound.db once per file (one
    writer-thread hop less per pass); a file made again (a new inode) is read again, and
    its cursor starts over."""
    import shutil

    from carapace.channels.fake import make_event
    from carapace.host import delivery as delivery_mod

    reads: list[str] = []
    real = delivery_mod.tables_and_cursor

    def counted(conn: sqlite3.Connection) -> int:
        cursor = real(conn)  # (a try that met a commit's lock is set aside and run again:
        reads.append("cursor")  # only a read that ended counts)
        return cursor

    monkeypatch.setattr(delivery_mod, "tables_and_cursor", counted)
    ag = rig.agent()
    rig.wire(rig.chat("chan"), ag)
    rig.run(rig.host.route(make_event("hi", platform_id="chan", id="m1")))
    [s] = rig.sessions()
    rig.reply(s, {"text": "one"}, channel_type="fake", platform_id="chan")
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    rig.reply(s, {"text": "two"}, channel_type="fake", platform_id="chan")
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert reads == ["cursor"] and rig.channel.texts() == ["one", "two"]
    paths = rig.host.sessions.paths(s)
    rig.host.sessions.release_all()
    tmp = paths.inbound.with_name("copy.db")
    shutil.copyfile(paths.inbound, tmp)
    os.replace(tmp, paths.inbound)  # the same content in a new file: a new inode
    rig.reply(s, {"text": "three"}, channel_type="fake", platform_id="chan")
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert reads == ["cursor", "cursor"] and rig.channel.texts() == ["one", "two", "three"]


def test_a_folder_made_again_is_a_new_file_whatever_its_inode_number(env: Env) -> None:
    """The writers tell files apart by (inode number, generation): the host's making the
    folder again is a new generation, so a freed inode number that comes back for the new
    inbound.db never gets the old file's connection, and a job meant for the old file (a
    delivery pass's cursor) fails and writes nothing into the new one."""
    import shutil

    from carapace.host.session_writer import FolderReplaced

    writers, s = env.mgr.writers, env.session
    paths = env.mgr.paths(s)

    def conn_of(conn: sqlite3.Connection) -> sqlite3.Connection:
        return conn

    def mark(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (v TEXT)")

    def tables(conn: sqlite3.Connection) -> list[str]:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]

    async def go() -> None:
        old_key = writers.key(s.id, paths)
        first = await writers.call(s.id, paths, conn_of, expect=old_key)
        # the same file, the same inode number: only the generation moved (as when the
        # new file gets the old one's number back)
        writers.replaced(s.id)
        assert writers.key(s.id, paths) == (old_key[0], old_key[1] + 1)
        with pytest.raises(FolderReplaced):
            await writers.call(s.id, paths, mark, expect=old_key)
        assert "marks" not in await writers.call(s.id, paths, tables)  # nothing written
        assert await writers.call(s.id, paths, conn_of) is not first  # opened anew
        # a real deletion: the old file's connection (which sees "marks") is not used for
        # the new folder's file
        await writers.call(s.id, paths, mark)
        shutil.rmtree(paths.root)
        writers.replaced(s.id)
        init_session_folder(paths)
        now_tables = await writers.call(s.id, paths, tables)
        assert "marks" not in now_tables and "messages_in" in now_tables

    asyncio.run(go())


def _note(conn: sqlite3.Connection, text: str) -> None:
    conn.execute("INSERT INTO t_note (text) VALUES (?)", (text,))


def _notes(env: Env) -> list[str]:
    conn = sqlite3.connect(env.mgr.paths(env.session).inbound)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t_note (text TEXT UNIQUE)")
        return [r[0] for r in conn.execute("SELECT text FROM t_note ORDER BY rowid")]
    finally:
        conn.close()


def test_jobs_queued_together_share_one_commit_and_answer_after_it(env: Env) -> None:
    """Jobs of one session that wait together (a route's rows, delivery outcomes, ack
    copies) run in one transaction: each caller hears its result only once the commit is
    on disk (a fresh connection sees every job's write then), and a job that raises has
    only its own writes undone."""
    from carapace.db.connection import transaction

    mgr, s = env.mgr, env.session
    paths = mgr.paths(s)
    _notes(env)  # the table
    inside: list[bool] = []

    def writer(text: str) -> Any:
        def run(conn: sqlite3.Connection) -> list[str]:
            inside.append(conn.in_transaction)  # in the batch's transaction already
            with transaction(conn):
                _note(conn, text)
            return _notes(env)  # another connection: not committed yet

        return run

    def failing(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            _note(conn, "undone")
        raise ValueError("the job's own error")

    async def go() -> list[Any]:
        gate, (held, entered) = _hold(mgr.writers, s.id, env)
        await asyncio.to_thread(entered.wait)
        calls = [asyncio.ensure_future(mgr.writers.call(s.id, paths, writer("one"))),
                 asyncio.ensure_future(mgr.writers.call(s.id, paths, failing)),
                 asyncio.ensure_future(mgr.writers.call(s.id, paths, writer("two")))]  # fmt: skip
        await asyncio.sleep(0.05)  # all three queued behind the held job
        gate.set()
        await held
        return list(await asyncio.gather(*calls, return_exceptions=True))

    seen_one, err, seen_two = asyncio.run(go())
    assert inside == [True, True]
    assert seen_one == [] and seen_two == []  # nothing was visible before the commit
    assert isinstance(err, ValueError)
    assert _notes(env) == ["one", "two"]


def test_a_sqlite_error_in_a_batch_runs_its_jobs_one_by_one(env: Env) -> None:
    """A job whose statement SQLite refuses (here a duplicate) inside a shared batch: the
    batch is rolled back and its jobs run again one by one, so the others are stored once
    and only that caller hears the error."""
    mgr, s = env.mgr, env.session
    paths = mgr.paths(s)
    _notes(env)  # the table
    runs: list[str] = []

    def job(text: str) -> Any:
        def run(conn: sqlite3.Connection) -> str:
            runs.append(text)
            from carapace.db.connection import transaction

            with transaction(conn):
                _note(conn, text)
            return text

        return run

    async def go() -> list[Any]:
        await mgr.writers.call(s.id, paths, job("dup"))  # stored before
        gate, (held, entered) = _hold(mgr.writers, s.id, env)
        await asyncio.to_thread(entered.wait)
        calls = [asyncio.ensure_future(mgr.writers.call(s.id, paths, job(t)))
                 for t in ("a", "dup", "b")]  # fmt: skip
        await asyncio.sleep(0.05)
        gate.set()
        await held
        return list(await asyncio.gather(*calls, return_exceptions=True))

    a, dup, b = asyncio.run(go())
    assert (a, b) == ("a", "b")
    assert isinstance(dup, sqlite3.IntegrityError)
    assert _notes(env) == ["dup", "a", "b"]
    # the batch got as far as the duplicate, then each job ran alone
    assert runs == ["dup", "a", "dup", "a", "dup", "b"]


def test_a_bare_managers_accept_hears_a_refusal_and_raises_a_passing_failure(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a host's journal the row is written in ``accept`` itself: its seq (None for
    an id already there) or a refusal for good is heard through ``outcome``; a passing
    failure (a full disk) is raised, so the sender is not acknowledged."""
    mgr, s = env.mgr, env.session
    heard: list[tuple[int | None, BaseException | None]] = []

    async def outcome(seq: int | None, exc: BaseException | None) -> None:
        heard.append((seq, exc))

    def accept(mid: str) -> None:
        asyncio.run(mgr.accept(s, _row(mid), now=NOW, outcome=outcome))

    accept("a")
    accept("a")  # redelivered
    assert isinstance(heard[0][0], int) and heard[0][1] is None and heard[1] == (None, None)

    def corrupt(conn: sqlite3.Connection, row: dict[str, Any], seq: int) -> bool:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(sessions_mod, "insert_message_in_if_new", corrupt)
    accept("b")
    assert heard[2][0] is None and isinstance(heard[2][1], sqlite3.DatabaseError)

    def full(conn: sqlite3.Connection, row: dict[str, Any], seq: int) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sessions_mod, "insert_message_in_if_new", full)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        accept("c")
    assert len(heard) == 3
    assert [mid for mid, _ in _stored(env)] == ["a"]
