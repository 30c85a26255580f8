"""DirWatcher: inotify and polling give the same answers."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.watch import IN_CLOSE_WRITE, DirWatcher, journal_idle


@pytest.fixture(params=[True, False], ids=["inotify", "polling"])
def watcher(request: pytest.FixtureRequest) -> Iterator[DirWatcher]:
    w = DirWatcher(poll_interval=0.05, use_inotify=request.param)
    yield w
    w.close()


def test_inotify_is_used_on_linux() -> None:
    with DirWatcher() as w:
        assert w.uses_inotify
        assert isinstance(w.fileno(), int)


def test_polling_has_no_fileno() -> None:
    with DirWatcher(use_inotify=False) as w:
        assert w.fileno() is None


def test_wait_times_out_without_events(watcher: DirWatcher, tmp_path: Path) -> None:
    watcher.add(tmp_path)
    start = time.monotonic()
    assert watcher.wait(0.2) == set()
    assert time.monotonic() - start >= 0.15


def test_write_wakes_wait(watcher: DirWatcher, tmp_path: Path) -> None:
    watcher.add(tmp_path)
    threading.Timer(0.1, lambda: (tmp_path / "f").write_text("x")).start()
    start = time.monotonic()
    assert watcher.wait(60.0) == {tmp_path}
    assert time.monotonic() - start < 30.0  # woken by the write, not by the 60 s timeout


def test_a_write_to_the_interrupt_fd_ends_a_wait(tmp_path: Path) -> None:
    """The runner's SIGTERM: the C-level handler writes to the wake-up pipe, and the wait for
    inbound rows returns at once (a retried select would sleep on to its timeout). Both
    kinds of watcher; the pipe is emptied, so the next wait waits again."""
    for use_inotify in (True, False):
        r, w = os.pipe2(os.O_NONBLOCK)
        with DirWatcher(poll_interval=30.0, use_inotify=use_inotify) as watcher:
            watcher.add(tmp_path)
            watcher.interrupt_on(r)
            os.write(w, b"\x0f" * 3)
            start = time.monotonic()
            assert watcher.wait(60.0) == set()
            assert time.monotonic() - start < 30.0  # not the poll interval, not the timeout
            with pytest.raises(BlockingIOError):
                os.read(r, 1)  # emptied
            assert watcher.wait(0.05) == set()
        os.close(r)
        os.close(w)


def test_drain_is_non_blocking_and_resets(watcher: DirWatcher, tmp_path: Path) -> None:
    watcher.add(tmp_path)
    (tmp_path / "f").write_text("x")
    deadline = time.monotonic() + 30
    seen: set[Path] = set()
    while not seen and time.monotonic() < deadline:
        seen = watcher.drain()
        time.sleep(0.06)
    assert seen == {tmp_path}
    time.sleep(0.1)
    assert watcher.drain() == set()


def test_name_filter_ignores_other_files(watcher: DirWatcher, tmp_path: Path) -> None:
    watcher.add(tmp_path, names={"inbound.db", "inbound.db-journal"})
    (tmp_path / ".heartbeat").write_text("")
    assert watcher.wait(0.3) == set()
    (tmp_path / "inbound.db").write_text("x")
    assert watcher.wait(2.0) == {tmp_path}


def test_sqlite_commit_is_seen(watcher: DirWatcher, tmp_path: Path) -> None:
    db = tmp_path / "inbound.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE t (x)")
    watcher.add(tmp_path, names={"inbound.db", "inbound.db-journal"})
    watcher.wait(0.2)  # settle
    conn.execute("INSERT INTO t VALUES (1)")
    assert watcher.wait(2.0) == {tmp_path}
    conn.close()


def test_two_dirs_and_remove(watcher: DirWatcher, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watcher.add(a)
    watcher.add(b)
    (b / "f").write_text("x")
    assert watcher.wait(2.0) == {b}
    watcher.remove(b)
    (b / "g").write_text("x")
    assert watcher.wait(0.3) == set()
    assert watcher.paths() == [a]


def test_missing_dir_raises(tmp_path: Path) -> None:
    with DirWatcher() as w, pytest.raises(FileNotFoundError):
        w.add(tmp_path / "nope")


def _wait_for(watcher: DirWatcher, timeout: float = 30.0) -> set[Path]:
    deadline = time.monotonic() + timeout
    seen: set[Path] = set()
    while not seen and time.monotonic() < deadline:
        seen = watcher.wait(0.06)
    return seen


def test_settle_reports_a_commit_not_the_writes_before_it(
    watcher: DirWatcher, tmp_path: Path
) -> None:
    """Issue 19: a reader woken by a commit's first write read while the writer held its
    lock and slept in SQLite's busy handler. With ``settle`` the folder is reported only
    once the journal is empty again: after the commit, never during it."""
    from carapace.db.connection import session_write_pragmas

    conn = sqlite3.connect(tmp_path / "inbound.db", isolation_level=None)
    session_write_pragmas(conn)
    conn.execute("CREATE TABLE m (x)")
    watcher.add(tmp_path, names={"inbound.db", "inbound.db-journal"}, settle=True)
    _wait_for(watcher, 0.3)  # whatever the set-up raised
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(50):  # enough pages that the journal and the file are written
        conn.execute("INSERT INTO m VALUES (zeroblob(20000))")
    assert not journal_idle(str(tmp_path / "inbound.db-journal"))  # a commit in progress
    assert watcher.wait(0.3) == set()  # its writes are not reported
    conn.execute("COMMIT")
    assert journal_idle(str(tmp_path / "inbound.db-journal"))
    assert _wait_for(watcher) == {tmp_path}  # the commit point is
    conn.close()


def test_a_journal_is_idle_only_once_its_header_is_zeroed(tmp_path: Path) -> None:
    """``PERSIST`` keeps the journal's bytes: a transaction is told from the header (28
    bytes zeroed at each commit's end, SQLite's ``zeroJournalHdr``). In the journaling
    phase the magic number is still zero but the page size is written: busy. A link or a
    FIFO in the journal's place is never followed nor blocks."""
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = PERSIST")
    conn.execute("CREATE TABLE m (x)")
    journal = tmp_path / "x.db-journal"
    assert journal.stat().st_size > 0 and journal_idle(str(journal))
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO m VALUES (zeroblob(5000))")  # journaled, not yet synced
    header = journal.read_bytes()[:28]
    assert header[:8] == bytes(8) and any(header)  # the magic not there yet
    assert not journal_idle(str(journal))
    conn.execute("COMMIT")
    assert journal_idle(str(journal))
    conn.close()
    assert journal_idle(str(_write(tmp_path / "empty", b"")))
    assert not journal_idle(str(_write(tmp_path / "crash", bytes(12) + b"\x01" + bytes(40))))
    (tmp_path / "link").symlink_to(journal)
    assert not journal_idle(str(tmp_path / "link"))  # (its target is idle: not followed)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "f").write_bytes(b"x")
    assert not journal_idle(str(tmp_path / "folder"))  # not a file: never read
    os.mkfifo(tmp_path / "fifo")
    assert journal_idle(str(tmp_path / "fifo"))  # empty: reported, the reader copes
    with pytest.raises(FileNotFoundError):
        journal_idle(str(tmp_path / "none"))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_without_settle_every_write_is_reported(watcher: DirWatcher, tmp_path: Path) -> None:
    watcher.add(tmp_path, names={"x.db", "x.db-journal"})
    (tmp_path / "x.db-journal").write_bytes(b"journal in progress")
    assert _wait_for(watcher) == {tmp_path}


def test_settle_does_not_follow_a_linked_journal(watcher: DirWatcher, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    watcher.add(folder, names={"x.db", "x.db-journal"}, settle=True)
    (tmp_path / "elsewhere").write_bytes(b"")
    (folder / "x.db-journal").symlink_to(tmp_path / "elsewhere")  # an empty target
    (folder / "x.db").write_bytes(b"data")
    assert watcher.wait(0.3) == set()  # a link is not followed: never "settled"
    (folder / "x.db-journal").unlink()
    (folder / "x.db").write_bytes(b"more")
    assert _wait_for(watcher) == {folder}


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0.05)[0])


def test_a_settle_watch_wakes_once_per_commit_not_for_its_writes(tmp_path: Path) -> None:
    """Issue 19: a commit is a dozen writes (three per journaled page), and the folder holds
    the other side's database and a log, written all the time. A ``settle`` watch asks the
    kernel only for the end of a commit (the journal closed or removed), so none of those
    writes wakes the reader; a commit made by another process (as a runner's is) does, once."""
    import subprocess
    import sys

    from carapace.db.connection import session_write_pragmas

    conn = sqlite3.connect(tmp_path / "outbound.db", isolation_level=None)
    session_write_pragmas(conn)
    conn.execute("CREATE TABLE m (x)")
    conn.close()
    with DirWatcher() as w:
        w.add(tmp_path, names={"outbound.db", "outbound.db-journal"}, settle=True)
        fd = w.fileno()
        assert fd is not None
        w.drain()
        with (
            open(tmp_path / ".runner.log", "a") as log,
            open(tmp_path / "inbound.db", "ab") as other,
        ):
            for _ in range(20):  # a log line, the other side's file: written, never closed
                log.write("line\n")
                log.flush()
                other.write(b"x" * 4096)
                other.flush()
            assert not _readable(fd)  # not one wake
        assert not _readable(fd)  # nor their closing: only the journal's own watch hears one
        code = (
            "import sqlite3, sys\n"
            "from carapace.db.connection import session_write_pragmas\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "session_write_pragmas(c)\n"
            "for line in sys.stdin:\n"  # one commit per line, on a kept connection
            "    c.execute('BEGIN IMMEDIATE')\n"
            "    for _ in range(30): c.execute('INSERT INTO m VALUES (zeroblob(5000))')\n"
            "    c.execute('COMMIT')\n"
            "    print('committed', flush=True)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "outbound.db")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write("1\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "committed"
            assert w._inotify is not None
            raw = [(wd, name, mask) for wd, mask, name in w._inotify.read()]
            # the end, nothing else: the journal's own watch, closed after its writes
            assert [(n, m) for _, n, m in raw] == [("", IN_CLOSE_WRITE)]
            assert w._journal_wds.get(raw[0][0]) == tmp_path
            proc.stdin.write("2\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "committed"
            assert _wait_for(w) == {tmp_path}
        finally:
            proc.communicate("", timeout=20)


def _db(path: Path, mode: str = "TRUNCATE") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {mode}")
    conn.execute("CREATE TABLE IF NOT EXISTS m (x)")
    return conn


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO m VALUES (1)")
    conn.execute("COMMIT")


def test_a_sides_own_commits_in_the_shared_folder_wake_no_one(tmp_path: Path) -> None:
    """Issue 19: the host and a runner share a folder, each watching the other's database.
    The journal being watched itself, a commit to the watcher's own database (its journal
    closed) wakes nothing; one to the watched database wakes the watcher, once."""
    mine, theirs = _db(tmp_path / "inbound.db"), _db(tmp_path / "outbound.db")
    with DirWatcher() as w:
        w.add(tmp_path, names={"outbound.db", "outbound.db-journal"}, settle=True)
        fd = w.fileno()
        assert fd is not None and w._journal_wds_of.get(tmp_path)
        for _ in range(5):
            _commit(mine)
        assert not _readable(fd)
        _commit(theirs)
        assert _wait_for(w) == {tmp_path}
        assert w.drain() == set()
    mine.close()
    theirs.close()


@pytest.mark.parametrize("how", ["delete mode", "replaced", "moved away", "a link"])
def test_a_journal_that_leaves_its_name_puts_the_folder_back_on_its_own_watch(
    tmp_path: Path, how: str
) -> None:
    """The journal's own watch follows its file; once that file is not the journal any
    more (another side in DELETE mode removes it after each commit, the file is replaced
    or moved, a link stands in its place) the folder is watched for every commit's end
    again, and each commit is still heard: a wake is never lost."""
    theirs = _db(tmp_path / "outbound.db")
    journal = tmp_path / "outbound.db-journal"
    with DirWatcher() as w:
        if how == "a link":
            journal.unlink()
            (tmp_path / "elsewhere").write_bytes(b"")
            journal.symlink_to(tmp_path / "elsewhere")
        w.add(tmp_path, names={"outbound.db", "outbound.db-journal"}, settle=True)
        assert bool(w._journal_wds_of.get(tmp_path)) == (how != "a link")
        if how == "delete mode":
            theirs.execute("PRAGMA journal_mode = DELETE")  # (removes the journal)
        elif how == "replaced":
            (tmp_path / "new").write_bytes(b"")
            os.replace(tmp_path / "new", journal)
        elif how == "moved away":
            os.replace(journal, tmp_path / "old-journal")
        else:
            journal.unlink()
        assert _wait_for(w) == {tmp_path}  # (the change to the folder is reported)
        assert not w._journal_wds_of.get(tmp_path)
        for _ in range(3):
            w.drain()
            _commit(theirs)
            assert _wait_for(w) == {tmp_path}
    theirs.close()
