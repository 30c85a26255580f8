"""Reading a session DB must not wake the side that watches it (issue 14, item 1).

As root, SQLite ``fchown``s a journal each time it opens it, which is an ``IN_ATTRIB``
event; the host's watcher reacted to it, re-read ``outbound.db`` (another open, another
event) and spun a CPU core while any runner lived. The watcher now ignores attribute
changes: only writes, creations, renames and deletions are a "look now"."""

from __future__ import annotations

from pathlib import Path

import pytest

from carapace.db.connection import connect
from carapace.db.session import SessionPaths, open_inbound, open_outbound
from carapace.watch import DirWatcher


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    paths = SessionPaths(tmp_path / "s")
    paths.root.mkdir()
    open_inbound(paths).close()
    conn = open_outbound(paths)
    conn.execute("INSERT INTO messages_out (id, seq, kind, timestamp, content) "
                 "VALUES ('m1', 1, 'chat', '2026-01-01T00:00:00Z', '{}')")  # fmt: skip
    conn.close()
    return paths


@pytest.mark.parametrize("side", ["host-reads-outbound", "runner-reads-inbound"])
def test_reads_do_not_wake_the_watcher(session: SessionPaths, side: str) -> None:
    watcher = DirWatcher(poll_interval=0.05)
    try:
        if side == "host-reads-outbound":
            names = {"outbound.db", "outbound.db-journal"}
            path = session.outbound
        else:
            names = {"inbound.db", "inbound.db-journal"}
            path = session.inbound
        watcher.add(session.root, names=names)
        assert watcher.drain() == set()
        for _ in range(20):  # what a woken reader does: open, read, close
            conn = connect(path, "session", readonly=True)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            conn.close()
        assert watcher.drain() == set(), "a read woke the watcher: the reader would spin"
    finally:
        watcher.close()


def test_a_commit_still_wakes_the_watcher(session: SessionPaths) -> None:
    watcher = DirWatcher(poll_interval=0.05)
    try:
        watcher.add(session.root, names={"outbound.db", "outbound.db-journal"})
        watcher.drain()
        conn = open_outbound(session)
        conn.execute("INSERT INTO messages_out (id, seq, kind, timestamp, content) "
                     "VALUES ('m2', 3, 'chat', '2026-01-01T00:00:00Z', '{}')")  # fmt: skip
        conn.close()
        assert watcher.wait(5.0) == {session.root}
    finally:
        watcher.close()
