"""Is a session DB whole? ``carapace doctor``'s read-only check of ``inbound.db`` and
``outbound.db`` (issue 14 item 4: a truncated ``outbound.db`` used to pass).

The file is not trusted: ``outbound.db`` is the agent's (it is opened through
``outbox_reader.open_checked``: no link followed, schema compared with the runner's, work
bounded), and ``inbound.db`` is opened the same careful way minus the schema comparison.
Two checks, cheapest first:

* the header: SQLite's magic, a valid page size, and a file as long as the page count the
  header vouches for (a truncated file is shorter) and a whole number of pages;
* ``PRAGMA quick_check`` within a time budget (pages that cannot be read, b-trees out of
  order, rows that do not match their table); over budget is reported as not checked.

Nothing is written: SQLite opens ``mode=ro``, and session DBs never use WAL (no ``-shm``).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from carapace import safefs
from carapace.host.outbox_reader import PROGRESS_OPS, OutboxRefused, open_checked

CHECK_BUDGET_S = 2.0
MAGIC = b"SQLite format 3\x00"


class Unchecked(Exception):
    """The check could not finish (over budget, locked): no verdict."""


def header_problem(path: Path) -> str | None:
    """Why the file cannot be a whole SQLite DB, judging by its header and size (or None)."""
    fd = safefs.open_beneath(path.parent, path.name, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        head = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    size = st.st_size
    if size == 0:
        return None  # an empty DB: its tables are checked by the caller
    if len(head) < 100 or not head.startswith(MAGIC):
        return f"not an SQLite database ({size} bytes, no SQLite header)"
    (raw_page,) = struct.unpack(">H", head[16:18])
    page = 65536 if raw_page == 1 else raw_page
    if page < 512 or page & (page - 1):
        return f"corrupt header (page size {raw_page})"
    (change,) = struct.unpack(">I", head[24:28])
    (pages,) = struct.unpack(">I", head[28:32])
    (valid_for,) = struct.unpack(">I", head[92:96])
    if change == valid_for and pages and size < pages * page:
        return f"truncated: {size} bytes, its header says {pages} pages of {page} ({pages * page})"
    if size % page:
        return f"truncated or damaged: {size} bytes is not a whole number of {page}-byte pages"
    return None


@contextmanager
def _open_inbound(path: Path, budget_s: float) -> Iterator[sqlite3.Connection]:
    """``inbound.db`` read-only, no link followed, untrusted schema, bounded work."""
    uri = f"file:{quote(str(path))}?mode=ro&nofollow=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1.0)
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_OPS)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA mmap_size = 0")
        yield conn
    finally:
        conn.close()


def _quick_check(conn: sqlite3.Connection) -> str | None:
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise Unchecked(f"integrity check took over {CHECK_BUDGET_S:g} s") from None
        if "locked" in str(exc) or "busy" in str(exc):
            raise Unchecked(str(exc)) from None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows == ["ok"]:
        return None
    return "integrity check failed: " + "; ".join(r[:200] for r in rows)


def session_db_problem(path: Path, *, budget_s: float = CHECK_BUDGET_S) -> str | None:
    """What is wrong with a session DB (None: whole). ``Unchecked`` when no verdict could be
    reached; ``FileNotFoundError`` when it is missing. ``outbound.db`` is schema-checked."""
    try:
        problem = header_problem(path)
    except safefs.UnsafePathError as exc:
        return f"refused: {exc}"
    if problem is not None:
        problem = _confirmed(path, problem, budget_s)
        if problem is not None:
            return problem
    if path.name == "outbound.db":
        try:
            with open_checked(path, budget_s=budget_s) as conn:
                return _quick_check(conn)
        except OutboxRefused as exc:
            if "took over" in str(exc):
                raise Unchecked(str(exc)) from None
            return str(exc)
    try:
        with _open_inbound(path, budget_s) as conn:
            conn.execute("BEGIN")
            if (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='messages_in'"
                ).fetchone()
                is None
            ):
                return "no messages_in table"
            return _quick_check(conn)
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise Unchecked(f"integrity check took over {budget_s:g} s") from None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)


def _confirmed(path: Path, problem: str, budget_s: float) -> str | None:
    """Judge the header again while holding a read lock: a writer in the middle of a commit
    can leave the header ahead of the file for a moment; under the lock no commit runs."""
    try:
        with _open_inbound(path, budget_s) as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return header_problem(path)
    except (sqlite3.Error, OSError, safefs.UnsafePathError):
        return problem  # unreadable as well: the header's verdict stands


def failed_messages(path: Path, *, budget_s: float = CHECK_BUDGET_S) -> int:
    """How many ``messages_in`` rows of an ``inbound.db`` ended ``failed`` (0 if unreadable)."""
    try:
        with _open_inbound(path, budget_s) as conn:
            row = conn.execute("SELECT COUNT(*) FROM messages_in WHERE status='failed'")
            return int(row.fetchone()[0])
    except (sqlite3.Error, OSError, TypeError, ValueError):
        return 0
