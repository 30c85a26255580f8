"""NanoClaw's way of writing its session files, on this disk, in the same run (issue 19).

The goals compare carapace with NanoClaw "in the same sitting": the disk here moves by
2-3x between sittings (spec/perf-anchors.md §4 measured 6,673 WAL commits/s; the same
loop gave 2,850-3,350 on 2026-12-07), so a NanoClaw figure from another sitting says
little.
NanoClaw itself (TypeScript, better-sqlite3 and Bun) cannot be run here, so this module
does what its two hot writes do, statement for statement, as the specs describe them, in
Python's ``sqlite3`` on the same files and disk:

* :func:`write_session_message` — the router's ``writeSessionMessage``
  (spec/host.md §3.8, §2.5): per message, open ``inbound.db`` (``journal_mode=DELETE``,
  ``busy_timeout=5000``), the lazy column migration's ``PRAGMA table_info`` probe, the
  next even seq (``MAX(seq)``), the ``INSERT`` in autocommit, close; then ``UPDATE
  sessions SET last_active`` on the central WAL database.
* :func:`write_message_out` — the container's ``writeMessageOut`` (spec/runner.md §4.1,
  §4.4): a long-lived read-write ``outbound.db`` (``journal_mode=DELETE``,
  ``busy_timeout=5000``, ``foreign_keys=ON``) and a long-lived read-only ``inbound.db``;
  per row ``MAX(seq)`` of both tables, the next odd seq, the ``INSERT`` in autocommit.

How close this is to NanoClaw's own code, measured in one sitting (perf-anchors §3-4):
the same per-message open/insert/close in Python ran 1,164 msg/s where NanoClaw's
``writeSessionMessage`` ran 903 (its session-db level, 990); a statement-for-statement
replica of ``writeMessageOut`` in Node ran 1,232 rows/s where the real one under Bun ran
1,262. So the first reference is faster than NanoClaw (a goal of 2x it is harder than
2x NanoClaw), the second within a few per cent. The central database is written with
``synchronous=NORMAL`` (better-sqlite3's build default in WAL mode), the faster choice.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from carapace.db.session import SessionPaths, init_session_folder

# a realistic chat event's content, about 190 bytes (perf-anchors §3)
CONTENT = json.dumps({
    "text": "Could you look at the notes from Tuesday and tell me what we decided?",
    "sender": "Alice Example", "senderId": "telegram:123456789", "isMention": True,
    "isGroup": False,
})  # fmt: skip
REPLY = json.dumps({"text": "a reply of about the size of a chat message " * 3})


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _session(tmp: str) -> SessionPaths:
    paths = SessionPaths(Path(tmp) / "session")
    paths.root.mkdir(exist_ok=True)
    init_session_folder(paths)
    return paths


@contextlib.contextmanager
def _folder(folder: Path | None) -> Iterator[str]:
    if folder is not None:  # (a test reads what was written)
        yield str(folder)
        return
    with tempfile.TemporaryDirectory(prefix="carapace-bench-") as tmp:
        yield tmp


def write_session_message(n: int = 2000, folder: Path | None = None) -> float:
    """Messages per second through NanoClaw's ``writeSessionMessage`` discipline (in a
    temporary folder, or ``folder``)."""
    with _folder(folder) as tmp:
        paths = _session(tmp)
        central = sqlite3.connect(str(Path(tmp) / "v2.db"), isolation_level=None)
        central.execute("PRAGMA journal_mode = WAL")
        central.execute("PRAGMA synchronous = NORMAL")
        central.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, last_active TEXT)")
        central.execute("INSERT INTO sessions VALUES ('sess-1', NULL)")
        t0 = time.perf_counter()
        for i in range(n):
            conn = sqlite3.connect(str(paths.inbound), isolation_level=None)
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA table_info(messages_in)").fetchall()  # the migration probe
            top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_in").fetchone()[0]
            seq = 2 if top < 2 else top + 2 - top % 2
            now = _now_iso()
            conn.execute(
                "INSERT INTO messages_in (id, seq, kind, timestamp, status, series_id, "
                "platform_id, channel_type, thread_id, content) "
                "VALUES (?, ?, 'chat', ?, 'pending', ?, 'telegram:1', 'telegram', NULL, ?)",
                (f"m-{i}", seq, now, f"m-{i}", CONTENT),
            )
            conn.close()
            central.execute("UPDATE sessions SET last_active = ? WHERE id = 'sess-1'", (now,))
        rate = n / (time.perf_counter() - t0)
        central.close()
    return rate


def write_message_out(n: int = 2000, folder: Path | None = None) -> float:
    """Rows per second through NanoClaw's ``writeMessageOut`` discipline (in a temporary
    folder, or ``folder``)."""
    with _folder(folder) as tmp:
        paths = _session(tmp)
        out = sqlite3.connect(str(paths.outbound), isolation_level=None)
        out.execute("PRAGMA journal_mode = DELETE")
        out.execute("PRAGMA busy_timeout = 5000")
        out.execute("PRAGMA foreign_keys = ON")
        inb = sqlite3.connect(f"file:{paths.inbound}?mode=ro", uri=True, isolation_level=None)
        inb.execute("PRAGMA busy_timeout = 5000")
        inb.execute("PRAGMA mmap_size = 0")
        t0 = time.perf_counter()
        for i in range(n):
            top_out = out.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_out").fetchone()[0]
            top_in = inb.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_in").fetchone()[0]
            top = max(top_out, top_in)
            seq = top + 1 if top % 2 == 0 else top + 2
            out.execute(
                "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, channel_type, "
                "thread_id, content) VALUES (?, ?, datetime('now'), 'chat', 'cli:local', 'cli', "
                "NULL, ?)",
                (f"r-{i}", seq, REPLY),
            )
        rate = n / (time.perf_counter() - t0)
        inb.close()
        out.close()
    return rate
