"""Issue 19: a running host checkpoints the central DB's WAL from a thread of its own, not
inside a commit on its event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from carapace.db.connection import connect
from carapace.host import checkpointer
from carapace.host.checkpointer import AUTOCHECKPOINT_PAGES, Checkpointer


def test_checkpoints_move_off_the_loop_connection_and_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpointer, "INTERVAL_S", 3600.0)  # only stop()'s checkpoint
    path = tmp_path / "v2.db"
    loop_conn = connect(path, "central")
    try:
        loop_conn.execute("CREATE TABLE t (x TEXT)")
        cp = Checkpointer(path, loop_conn)
        cp.start()
        assert loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for _ in range(50):  # commits on the "loop": the WAL grows, none checkpoints there
            loop_conn.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
        assert path.stat().st_size < 50 * 4000  # all of it still in the WAL
        cp.stop()  # a last checkpoint, then the loop connection checkpoints by itself again
        assert loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOCHECKPOINT_PAGES
        assert path.stat().st_size > 50 * 4000  # the thread copied it into the database
        assert loop_conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 50
        cp.stop()  # idempotent
    finally:
        loop_conn.close()


def test_stop_from_the_event_loop_gives_the_loop_connection_its_checkpoints_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host stops it from its loop: the join waits in a worker, but the pragma must be
    set on the loop connection's own thread (a worker's call would be refused and lost)."""
    monkeypatch.setattr(checkpointer, "INTERVAL_S", 3600.0)
    path = tmp_path / "v2.db"
    loop_conn = connect(path, "central")

    async def scenario() -> int:
        cp = Checkpointer(path, loop_conn)
        await cp.start_async()
        assert loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        await cp.stop_async()
        await cp.stop_async()  # idempotent
        return int(loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    try:
        assert asyncio.run(scenario()) == AUTOCHECKPOINT_PAGES
    finally:
        loop_conn.close()


def test_a_failing_checkpoint_thread_keeps_trying_instead_of_ending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop connection has no automatic checkpoints while the thread runs: a thread
    ended by an error (the file could not be opened) left the WAL to grow for the host's
    whole life. It opens the file again, after pauses that double, and checkpoints."""
    import sqlite3
    import threading

    monkeypatch.setattr(checkpointer, "INTERVAL_S", 0.001)
    monkeypatch.setattr(checkpointer, "RETRY_MAX_S", 0.004)
    path = tmp_path / "v2.db"
    loop_conn = connect(path, "central")
    tries: list[int] = []
    checkpointed = threading.Event()
    real_connect, real_checkpoint = checkpointer.connect, Checkpointer.checkpoint

    def flaky_connect(p: Path, kind: str) -> sqlite3.Connection:
        tries.append(1)
        if len(tries) <= 3:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(p, kind)

    def noting(conn: sqlite3.Connection) -> None:
        real_checkpoint(conn)
        checkpointed.set()

    monkeypatch.setattr(checkpointer, "connect", flaky_connect)
    monkeypatch.setattr(Checkpointer, "checkpoint", staticmethod(noting))
    try:
        loop_conn.execute("CREATE TABLE t (x TEXT)")
        for _ in range(20):
            loop_conn.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
        cp = Checkpointer(path, loop_conn)
        cp.start()
        assert checkpointed.wait(10)  # after three failed opens
        assert len(tries) == 4
        assert cp._thread is not None and cp._thread.is_alive()
        assert path.stat().st_size > 20 * 4000  # the WAL was copied into the database
        cp.stop()
        assert loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOCHECKPOINT_PAGES
    finally:
        loop_conn.close()
