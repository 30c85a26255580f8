"""A session file its agent keeps locked must not hold up anyone else (the agent is
hostile). An agent may read its ``inbound.db``, so it can keep a read transaction open for
as long as it likes; the host's commit to that file then cannot finish. The writer thread
that serves the session must not wait for it: it sets the session's jobs aside (their
order kept), serves the other sessions, tries again, and holds no lock meanwhile (a
waiting commit's PENDING lock would stop every reader of the file, the host's included).
Past the deadline the jobs fail as busy, as a lock held too long always did."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from carapace.db.connection import is_busy, transaction
from carapace.db.session import SessionPaths, init_session_folder, insert_message_in
from carapace.host.session_writer import SessionWriters

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _run(coro: Any) -> Any:
    """Run a test's steps, bounded: a job nobody answers fails the test, never hangs it."""
    return asyncio.run(asyncio.wait_for(coro, 30))


def _paths(tmp_path: Path, name: str) -> SessionPaths:
    paths = SessionPaths(tmp_path / name)
    init_session_folder(paths)
    return paths


def _insert(mid: str) -> Any:
    def run(conn: sqlite3.Connection) -> int:
        with transaction(conn, durable=True):
            return insert_message_in(conn, {
                "id": mid, "kind": "chat", "timestamp": "2026-01-01T00:00:00Z",
                "platform_id": "p", "channel_type": "cli", "content": '{"text": "x"}',
                "series_id": mid,
            }, other_max=0)  # fmt: skip

    return run


def _ids(paths: SessionPaths) -> list[str]:
    conn = sqlite3.connect(paths.inbound)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM messages_in ORDER BY seq")]
    finally:
        conn.close()


HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()
print("held", flush=True)
sys.stdin.read()  # until the test lets go
"""


class Agent:
    """The agent's side of the file, in a process of its own (as a runner's would be): a
    read transaction kept open (a shared lock) until :meth:`let_go`."""

    def __init__(self, paths: SessionPaths) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(paths.inbound)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"held\n"

    def let_go(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)

    def close(self) -> None:
        self.let_go()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[SessionWriters, SessionPaths, SessionPaths, Agent]]:
    writers = SessionWriters(threads=1)  # both sessions on one thread
    a, b = _paths(tmp_path, "sess-a"), _paths(tmp_path, "sess-b")
    agent = Agent(a)
    try:
        yield writers, a, b, agent
    finally:
        agent.close()
        writers.close()


def test_a_locked_session_file_does_not_hold_up_another_sessions_writes(env: Any) -> None:
    """A's commit cannot finish while its agent reads; B's job, queued behind A's on the
    same thread, is written meanwhile. A's row follows once the lock goes."""
    writers, a, b, agent = env

    async def go() -> None:
        held = asyncio.ensure_future(writers.call("a", a, _insert("a1")))
        await asyncio.sleep(0)  # submitted first
        assert isinstance(await writers.call("b", b, _insert("b1")), int)
        assert not held.done()  # set aside, not failed, not written
        agent.let_go()
        assert isinstance(await held, int)

    _run(go())
    assert _ids(a) == ["a1"] and _ids(b) == ["b1"]


def test_a_set_aside_session_keeps_its_order_and_holds_no_lock(env: Any) -> None:
    """Jobs of A that come while A waits wait behind it (the seqs keep the order they were
    submitted in); meanwhile the host holds no lock on A's file: a reader that hardly waits
    still gets in (a commit left waiting would hold PENDING and refuse it)."""
    writers, a, b, agent = env

    async def go() -> list[int]:
        first = asyncio.ensure_future(writers.call("a", a, _insert("a1")))
        await asyncio.sleep(0)
        await writers.call("b", b, _insert("b1"))  # A was tried and set aside before this
        second = asyncio.ensure_future(writers.call("a", a, _insert("a2")))  # comes after
        await asyncio.sleep(0)
        await writers.call("b", b, _insert("b2"))
        assert not first.done() and not second.done()
        # (a commit that waits holds PENDING throughout; a try again holds it for a moment)
        reader = sqlite3.connect(a.inbound, timeout=0.05, isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0] == 0
            reader.execute("ROLLBACK")
        finally:
            reader.close()
        agent.let_go()
        return [await first, await second]

    seqs = _run(go())
    assert seqs == sorted(seqs) and _ids(a) == ["a1", "a2"] and _ids(b) == ["b1", "b2"]


def test_a_lock_held_past_the_deadline_fails_the_jobs_as_busy(env: Any) -> None:
    """Past ``busy_deadline_s`` every job of the session set aside hears "database is
    locked" (its caller treats it as a passing failure: the ingest journal keeps the rows);
    the file is untouched, and once the lock goes the next write goes through."""
    writers, a, _b, agent = env
    writers.busy_deadline_s = 0.0

    async def go() -> list[Any]:
        jobs = [writers.call("a", a, _insert(f"a{i}")) for i in range(3)]
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    results = _run(go())
    assert all(isinstance(r, sqlite3.OperationalError) and is_busy(r) for r in results), results
    assert _ids(a) == []
    agent.let_go()
    assert isinstance(_run(writers.call("a", a, _insert("later"))), int)
    assert _ids(a) == ["later"]


def test_drain_waits_for_a_set_aside_job(env: Any) -> None:
    """The host's stop drains the writers: a job set aside is part of what it waits for."""
    writers, a, _b, agent = env

    async def go() -> None:
        held = asyncio.ensure_future(writers.call("a", a, _insert("a1")))
        await asyncio.sleep(0)
        draining = asyncio.ensure_future(writers.drain())
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not draining.done() and not held.done()
        agent.let_go()
        await draining
        assert held.done() and isinstance(held.result(), int)

    _run(go())
    assert _ids(a) == ["a1"]


def test_close_does_not_wait_for_a_lock_that_is_never_let_go(env: Any) -> None:
    """``close`` tries a set-aside job once more and fails it as busy rather than wait
    for a lock that may be held for ever (its caller, if any, hears it)."""
    writers, a, _b, _agent = env
    writers.busy_deadline_s = 3600.0
    results: list[Any] = []

    async def go() -> None:
        held = asyncio.ensure_future(writers.call("a", a, _insert("a1")))
        await asyncio.sleep(0.05)
        closer = threading.Thread(target=writers.close)
        closer.start()
        results.append(await asyncio.wait_for(asyncio.gather(held, return_exceptions=True), 30))
        await asyncio.to_thread(closer.join, 30)
        results.append(closer.is_alive())

    _run(go())
    [[res], alive] = results
    assert isinstance(res, sqlite3.OperationalError) and is_busy(res)
    assert alive is False
    assert _ids(a) == []


def test_tries_again_wait_in_no_busy_handler(env: Any) -> None:
    """The first try of a job waits ``WRITER_BUSY_MS`` for the lock; the tries again of a
    set-aside session wait not at all (a commit waiting in SQLite's busy handler holds
    PENDING, which keeps the file's readers out, the host's own included), and the
    connection waits as before once the lock is gone."""
    from carapace.host.session_writer import WRITER_BUSY_MS

    writers, a, _b, agent = env
    waits: list[int] = []

    def insert(conn: sqlite3.Connection) -> int:
        waits.append(conn.busy_ms)  # type: ignore[attr-defined]
        return int(_insert(f"a{len(waits)}")(conn))

    async def go() -> int:
        held = asyncio.ensure_future(writers.call("a", a, insert))
        while len(waits) < 4:  # tried, set aside, tried again
            await asyncio.sleep(0.002)
        agent.let_go()
        await held
        return int(await writers.call("a", a, lambda conn: conn.busy_ms))  # type: ignore[attr-defined]

    after = _run(go())
    assert waits[0] == WRITER_BUSY_MS
    assert set(waits[1:]) == {0}, waits
    assert after == WRITER_BUSY_MS
