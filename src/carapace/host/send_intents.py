"""Send intents: outbound rows handed to an adapter whose outcome is not recorded yet.

Issue 14: before a row goes to its adapter the host records that it is about to send it;
the outcome (``delivered`` row or attempt, in the session's ``inbound.db``) is committed
after. After a host crash, a row with an intent and no outcome may have been sent: it is
sent again flagged ``resend`` with its key (an adapter that can look it up on the platform
does, and skips the send).

Issue 19: the intent used to be a commit to ``inbound.db`` (``carapace_send_intent``) on the
critical path of every reply: three fsyncs, and a wake of the runner, which watches that
file. It protected against a *process* crash only, since at ``synchronous=NORMAL`` a commit
the host does not sync the journal of can be rolled back by a power loss (compat.md D8).
A line appended to one host-owned file gives the same protection for a ``write()``: the
page cache outlives the process. So:

* ``data/send-intents.jsonl`` (0600, the host's data folder, never an agent's): one JSON
  array per line, ``["i", session, row]`` before a send and ``["d", session, row]`` once its
  outcome is committed. Row ids are agent-chosen: JSON keeps a newline in one from making
  a line of its own. A torn last line (a crash mid-write) is ignored.
* A failed write (full disk) raises ``OSError``: the row is not sent (as before).
* At first use the file is read (``O_NOFOLLOW``, size-capped) and rewritten with only the
  intents still open; it is rewritten the same way whenever it passes
  :data:`COMPACT_BYTES` and at most :data:`MAX_OPEN` intents are open.
* No fsync, on purpose: a power loss can lose a line, and then a re-sent reply is not
  flagged (one possible duplicate where the platform cannot deduplicate), the same as a
  rolled-back commit before.
* ``carapace_send_intent`` rows written by an older version are still honoured
  (``delivery.py`` reads and clears them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

FILE_NAME = "send-intents.jsonl"
COMPACT_BYTES = 256 * 1024  # the file is rewritten with the open intents past this size
MAX_READ_BYTES = 64 * 1024 * 1024  # a file larger than this is not read (logged; no flags)
MAX_OPEN = 10_000  # compaction waits while more than this many are open (never expected)

Key = tuple[str, str]


def read_open(path: Path) -> dict[Key, None]:
    """The intents of ``path`` that have no outcome line after them, in order."""
    open_: dict[Key, None] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return open_
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_READ_BYTES + 1)
    if len(data) > MAX_READ_BYTES:
        logger.warning("%s is larger than %d bytes: not read (no re-send is flagged)",
                       path, MAX_READ_BYTES)  # fmt: skip
        return open_
    for line in data.splitlines():
        try:
            op, sid, rid = json.loads(line)
        except (ValueError, TypeError):
            continue  # a torn last line
        if not (isinstance(sid, str) and isinstance(rid, str)):
            continue
        if op == "i":
            open_[(sid, rid)] = None
        elif op == "d":
            open_.pop((sid, rid), None)
    return open_


def _line(op: str, session_id: str, row_id: str) -> bytes:
    return (json.dumps([op, session_id, row_id], ensure_ascii=True) + "\n").encode()


class SendIntents:
    """The host's intent log (one per home; the home lock makes this host its only writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open: dict[Key, None] | None = None  # loaded at first use
        self._fd: int | None = None
        self._size = 0

    def _ensure(self) -> dict[Key, None]:
        if self._open is None:
            try:
                self._open = read_open(self.path)
            except OSError as exc:  # unreadable: nothing is flagged, sends go on
                logger.warning("send intents: %s not read (%s)", self.path, exc)
                self._open = {}
            try:
                self._rewrite()
            except OSError as exc:  # e.g. a full disk: record() fails until it is writable
                logger.warning("send intents: %s not rewritten (%s)", self.path, exc)
        return self._open

    def _rewrite(self) -> None:
        """Replace the file with the open intents only (a new file, renamed over it)."""
        assert self._open is not None
        body = b"".join(_line("i", s, r) for s, r in self._open)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            os.write(fd, body)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        self._close_fd()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._size = len(body)

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600)  # fmt: skip
        written = os.write(self._fd, data)
        self._size += written
        if written != len(data):  # a short write (disk full mid-line): the line is torn
            raise OSError(f"{self.path}: short write")

    def record(self, session_id: str, row_id: str) -> None:
        """Before a send; ``OSError`` (e.g. a full disk) means: do not send."""
        open_ = self._ensure()
        self._append(_line("i", session_id, row_id))
        open_[(session_id, row_id)] = None

    def maybe_sent(self, session_id: str, row_id: str) -> bool:
        """The row was handed to its adapter before a crash, with no outcome recorded."""
        return (session_id, row_id) in self._ensure()

    def done(self, session_id: str, row_ids: Iterable[str]) -> None:
        """Their outcomes are committed. Best effort: a line that cannot be written leaves
        at most a needless ``resend`` flag after the next crash."""
        open_ = self._ensure()
        ended = [r for r in row_ids if (session_id, r) in open_]
        if not ended:
            return
        for r in ended:
            open_.pop((session_id, r), None)
        try:
            if self._size >= COMPACT_BYTES and len(open_) <= MAX_OPEN:
                self._rewrite()
            else:
                self._append(b"".join(_line("d", session_id, r) for r in ended))
        except OSError as exc:
            logger.warning("send intents: outcome line not written (%s)", exc)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        self._open = None
