"""Issue 19: the host's kept ``outbound.db`` connection meets the runner's commits (a
reader woken by the claim commit reads while the reply commits). It waits for the lock by
trying again every ``BUSY_RETRY_S``, not in SQLite's busy handler (first sleeps 1, 2 and
5 ms), still for at most ``BUSY_WAIT_MS``; then the read is refused, as before."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.db.session import SessionPaths, init_session_folder
from carapace.host import outbox_reader
from carapace.host.outbox_pool import OutboxReader
from carapace.host.outbox_reader import OutboxRefused, keep, read_rows, release
from carapace.testing.loop_ticks import LoopTicks

ROW = "INSERT INTO messages_out (id, seq, timestamp, kind, content) VALUES ('{}', {}, 't', 'chat', '{{}}')"


@pytest.fixture
def kept(tmp_path: Path) -> Iterator[Path]:
    paths = SessionPaths(tmp_path / "sess")
    init_session_folder(paths)
    keep(paths.outbound)
    try:
        yield paths.outbound
    finally:
        release(paths.outbound)


def _runner(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)


def test_a_read_meeting_a_runner_commit_is_retried_until_the_commit_ends(
    kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_rows(kept, 0) == []  # the kept connection is open
    conn = outbox_reader._kept[str(kept)].conn
    assert conn is not None
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # no busy handler
    tries: list[float] = []
    real_sleep = outbox_reader.time.sleep

    def counted(seconds: float) -> None:
        tries.append(seconds)
        if len(tries) == 3:  # the runner's commit ends while the host waits
            runner.execute("COMMIT")
        real_sleep(seconds)

    monkeypatch.setattr(outbox_reader.time, "sleep", counted)
    runner = _runner(kept)
    try:
        runner.execute("BEGIN EXCLUSIVE")  # a commit in progress: readers are locked out
        runner.execute(ROW.format("r1", 1))
        rows = read_rows(kept, 0)
    finally:
        runner.close()
    assert [r["id"] for r in rows] == ["r1"]  # waited for, then read: nothing refused
    first = outbox_reader.BUSY_RETRY_S
    assert tries == [first, 2 * first, 4 * first]  # short waits first, doubling
    assert outbox_reader._kept[str(kept)].conn is conn  # the same connection


def test_a_lock_held_past_the_wait_is_refused_and_nothing_is_kept_in_doubt(
    kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_reader, "BUSY_WAIT_MS", 20)
    runner = _runner(kept)
    try:
        runner.execute("BEGIN EXCLUSIVE")
        with pytest.raises(OutboxRefused, match="locked"):
            read_rows(kept, 0)
        runner.execute(ROW.format("r1", 1))
        runner.execute("COMMIT")
    finally:
        runner.close()
    assert [r["id"] for r in read_rows(kept, 0)] == ["r1"]


def test_a_runner_commit_ending_in_another_thread_is_met_by_the_retries(kept: Path) -> None:
    """As in a live session: the runner is another process; its commit ends on its own."""
    runner = _runner(kept)
    runner.execute("BEGIN EXCLUSIVE")
    runner.execute(ROW.format("r1", 1))
    done = threading.Timer(0.03, lambda: runner.execute("COMMIT"))
    done.start()
    try:
        rows = read_rows(kept, 0)
    finally:
        done.join()
        runner.close()
    assert [r["id"] for r in rows] == ["r1"]


def test_a_lock_the_agent_holds_on_purpose_costs_few_tries(
    kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent owns outbound.db and may hold its lock for good: the host's read waits
    with doubling sleeps (capped), so the whole wait is a few dozen tries, not one every
    0.3 ms (thousands a second of BEGIN, a failed read and ROLLBACK)."""
    monkeypatch.setattr(outbox_reader, "BUSY_WAIT_MS", 300)
    tries: list[float] = []
    real_sleep = outbox_reader.time.sleep

    def counted(seconds: float) -> None:
        tries.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(outbox_reader.time, "sleep", counted)
    agent = _runner(kept)
    try:
        agent.execute("BEGIN EXCLUSIVE")
        with pytest.raises(OutboxRefused, match="locked"):
            read_rows(kept, 0)
    finally:
        agent.close()
    assert max(tries) == outbox_reader.BUSY_RETRY_MAX_S
    assert len(tries) < 60  # 300 ms at 0.3 ms a try would be ~1,000


def test_a_read_that_outlasts_its_timeout_raises_and_leaves_the_loop_free() -> None:
    """A read held up past ``timeout_s`` (an agent's file under a lock it keeps, a crafted
    query plan) ends the host's wait with ``TimeoutError``; the event loop ran meanwhile."""
    release = threading.Event()
    reader = OutboxReader(workers=1, timeout_s=0.05)

    async def main() -> int:
        async with LoopTicks(0.005) as ticks:
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await reader.call(release.wait, 5.0)
            assert time.perf_counter() - t0 < 1.0
        return ticks.count

    try:
        assert asyncio.run(main()) >= 3
    finally:
        release.set()
        reader.close()


def test_an_agent_keeping_its_outbound_db_locked_holds_up_no_other_sessions_read(
    tmp_path: Path,
) -> None:
    """The host's outbound.db reads share a few worker threads. A read meeting a lock the
    agent keeps must not hold a worker while it waits: it gives the worker back between its
    tries, so another session's read (here: on the only worker) goes through meanwhile;
    the held read still gets its rows once the lock goes, within the wait it always had."""
    a, b = SessionPaths(tmp_path / "a"), SessionPaths(tmp_path / "b")
    for p in (a, b):
        init_session_folder(p)
        keep(p.outbound)
    _runner(b.outbound).execute(ROW.format("b1", 1))
    agent = _runner(a.outbound)
    agent.execute("BEGIN EXCLUSIVE")
    agent.execute(ROW.format("a1", 1))
    reader = OutboxReader(workers=1)

    async def main() -> tuple[list[str], list[str]]:
        held = asyncio.ensure_future(reader.call(read_rows, a.outbound, 0))
        await asyncio.sleep(0.05)  # its first tries met the lock
        other = [r["id"] for r in await reader.call(read_rows, b.outbound, 0)]
        assert not held.done()  # still waiting for the lock, off the worker
        agent.execute("COMMIT")
        return other, [r["id"] for r in await held]

    try:
        other, mine = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        agent.close()
        reader.close()
        for p in (a, b):
            release(p.outbound)
    assert other == ["b1"] and mine == ["a1"]


def test_the_readers_grow_to_their_number_and_no_further_and_close_cancels_the_rest() -> None:
    """The reader threads start as reads need them (never more than ``workers``): with two,
    three reads that block take two threads and the third waits for one; each runs as a
    pool thread (a busy file is tried again off the worker); the results and errors come
    back to their callers; ``close`` cancels what no thread took."""
    gate = threading.Event()
    running: list[str] = []
    reader = OutboxReader(workers=2)

    def held(name: str) -> tuple[str, bool, str]:
        running.append(name)
        gate.wait(30)
        return (
            name,
            getattr(outbox_reader._pool_thread, "on", False),
            threading.current_thread().name,
        )

    def fails() -> None:
        raise OutboxRefused("no")

    async def main() -> None:
        calls = [asyncio.ensure_future(reader.call(held, n)) for n in ("a", "b", "c")]
        for _ in range(3000):
            if len(running) == 2:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        assert sorted(running) == ["a", "b"]  # two threads, the third read waits
        gate.set()
        got = await asyncio.gather(*calls)
        assert [g[0] for g in got] == ["a", "b", "c"] and all(g[1] for g in got)
        assert {g[2] for g in got} <= {"outbox-1", "outbox-2"}
        with pytest.raises(OutboxRefused, match="no"):
            await reader.call(fails)
        gate.clear()
        running.clear()
        busy = [asyncio.ensure_future(reader.call(held, n)) for n in ("d", "e", "f")]
        for _ in range(3000):
            if len(running) == 2:
                break
            await asyncio.sleep(0.001)
        reader.close()  # "f" was taken by no thread: cancelled
        gate.set()
        done = await asyncio.gather(*busy, return_exceptions=True)
        assert [d[0] for d in done[:2] if isinstance(d, tuple)] == ["d", "e"]
        assert isinstance(done[2], asyncio.CancelledError)
        with pytest.raises(RuntimeError, match="closed"):
            await reader.call(held, "g")

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        gate.set()
        reader.close()
