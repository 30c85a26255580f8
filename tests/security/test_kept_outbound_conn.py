"""Issue 19: the host keeps one read-only connection to a live session's ``outbound.db``.
A persistent connection must not weaken the hostile-file defences (issue 12 item 7): a
schema changed after the first checked read, a file replaced by another (or by a link)
behind the open connection, are refused on the next read exactly as on a fresh open."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.db.session import OUTBOUND_SCHEMA, SessionPaths, init_session_folder
from carapace.host import outbox_reader
from carapace.host.outbox_reader import OutboxRefused, keep, read_rows, release

SLOW = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300000000) "
        "SELECT o.* FROM real_out o WHERE (SELECT max(i) FROM r) > 0")  # fmt: skip


@pytest.fixture
def kept(tmp_path: Path) -> Iterator[Path]:
    paths = SessionPaths(tmp_path / "sess")
    init_session_folder(paths)
    _agent(paths.outbound, "INSERT INTO messages_out (id, seq, timestamp, kind, content) "
                           "VALUES ('a', 1, 't', 'chat', '{}')")  # fmt: skip
    keep(paths.outbound)
    try:
        yield paths.outbound
    finally:
        release(paths.outbound)


def _agent(path: Path, *statements: str) -> None:
    """What the agent can do to its own file (it owns it)."""
    c = sqlite3.connect(str(path), isolation_level=None)
    try:
        c.execute("PRAGMA journal_mode=PERSIST")
        for s in statements:
            c.execute(s)
    finally:
        c.close()


def _entry(path: Path) -> outbox_reader._Kept:
    return outbox_reader._kept[str(path)]


def test_reads_reuse_one_connection_and_see_new_rows(kept: Path) -> None:
    assert [r["id"] for r in read_rows(kept, 0)] == ["a"]
    conn = _entry(kept).conn
    assert conn is not None
    _agent(kept, "INSERT INTO messages_out (id, seq, timestamp, kind, content) "
                 "VALUES ('b', 3, 't', 'chat', '{}')")  # fmt: skip
    assert [r["id"] for r in read_rows(kept, 1)] == ["b"]
    assert _entry(kept).conn is conn


def test_a_view_swapped_in_after_the_first_read_is_refused(kept: Path) -> None:
    assert read_rows(kept, 0)
    _agent(kept, "ALTER TABLE messages_out RENAME TO real_out",
           f"CREATE VIEW messages_out AS {SLOW}")  # fmt: skip
    with pytest.raises(OutboxRefused, match="unexpected"):
        read_rows(kept, 0)
    assert _entry(kept).conn is None  # dropped: the next read starts from a fresh check


def test_a_trigger_added_after_the_first_read_is_refused(kept: Path) -> None:
    assert read_rows(kept, 0)
    _agent(kept, "CREATE TRIGGER t AFTER DELETE ON processing_ack BEGIN SELECT 1; END")
    with pytest.raises(OutboxRefused, match="unexpected trigger"):
        read_rows(kept, 0)


def test_a_file_replaced_behind_the_open_connection_is_checked_again(kept: Path) -> None:
    assert read_rows(kept, 0)
    other = kept.with_name("other.db")
    _agent(other, *[s for s in OUTBOUND_SCHEMA.split(";") if s.strip()],
           "CREATE VIEW v AS SELECT 1")  # fmt: skip
    os.replace(other, kept)
    with pytest.raises(OutboxRefused, match="unexpected"):
        read_rows(kept, 0)


def test_a_link_put_in_place_of_the_file_is_refused(kept: Path, tmp_path: Path) -> None:
    assert read_rows(kept, 0)
    target = tmp_path / "elsewhere.db"
    os.replace(kept, target)
    kept.symlink_to(target)
    with pytest.raises(OutboxRefused):
        read_rows(kept, 0)


def _exclusive_from_another_process(path: Path) -> bool:
    """Whether another process (the runner) could take the file's write lock now."""
    import subprocess
    import sys

    code = ("import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)\n"
            "try:\n    c.execute('BEGIN EXCLUSIVE')\nexcept sqlite3.OperationalError:\n"
            "    print('locked')\nelse:\n    c.execute('ROLLBACK')\n    print('taken')\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, timeout=30)  # fmt: skip
    return out.stdout.strip() == "taken"


def test_checking_the_file_never_drops_a_read_lock_held_by_another_connection(
    kept: Path,
) -> None:
    """POSIX locks belong to the process: closing *any* descriptor of the file drops every
    lock the process holds on it. A read's check of the file (a regular file reached
    without a link) must not open it for reading: a read on another thread would lose its
    shared lock mid-transaction, and the runner could commit under it (a torn read)."""
    from carapace.host.outbox_reader import INLINE_BUDGET_S, open_checked, read_acks

    with open_checked(kept) as conn:  # the kept connection, in its read transaction
        assert conn.execute("SELECT count(*) FROM messages_out").fetchone()[0] == 1
        assert not _exclusive_from_another_process(kept)
        outbox_reader._check_file(kept)  # what every read does first
        read_acks(kept, ["a"], budget_s=INLINE_BUDGET_S)  # an inline read: its own connection
        assert not _exclusive_from_another_process(kept)  # still locked by the kept read
    assert _exclusive_from_another_process(kept)


def test_a_link_put_in_place_of_the_session_folder_is_refused(kept: Path, tmp_path: Path) -> None:
    """The file is looked at by ``lstat`` (never opened): its folder must be a real folder
    too, or a link there would lead every read to a file of the link's choosing."""
    import shutil

    assert [r["id"] for r in read_rows(kept, 0)] == ["a"]
    folder = kept.parent
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder, elsewhere)
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OutboxRefused, match="not a folder"):
        read_rows(kept, 0)
    with pytest.raises(OutboxRefused, match="not a folder"):
        outbox_reader.read_acks(kept, ["a"], budget_s=outbox_reader.INLINE_BUDGET_S)
