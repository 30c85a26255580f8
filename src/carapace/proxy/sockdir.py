"""The egress proxy's socket folder, and the removal of folders that dead hosts left.

Runners reach the proxy through Unix sockets in one owner-only folder per host process,
``carapace-proxy-*`` under ``$XDG_RUNTIME_DIR`` (when short) or the temp folder. A host
that does not reach ``stop()`` (killed, crashed, a test that simulates a crash) leaves its
folder behind; without a sweep they pile up (about 400 were found on one machine).

Liveness is a lock, not a process id: each host holds ``flock`` on ``.lock`` in its own
folder for its whole life, and the kernel drops it when the process dies. A pid could be
reused, and would mean nothing across pid namespaces sharing one ``/tmp``.

The sweep touches only folders of this user, never follows a link (``O_NOFOLLOW`` and
descriptor-relative calls: the temp folder is writable by everyone), and removes only
sockets and the lock file from them: a folder with anything else in it is left alone.
Folders from before the lock (no ``.lock``) are removed when older than
:data:`LEGACY_AGE_S` and no socket in them accepts a connection.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "carapace-proxy-"
LOCK = ".lock"
LEGACY_AGE_S = 600.0  # a lockless folder younger than this may be a host starting up
MAX_BASE_LEN = 40  # a socket path must stay under 108 bytes


def socket_base() -> Path:
    """Where socket folders go: ``$XDG_RUNTIME_DIR`` when it exists and is short, else
    the temp folder."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and len(base) <= MAX_BASE_LEN:
        return Path(base)
    return Path(tempfile.gettempdir())


class SocketDir:
    """An owner-only folder for the proxy's sockets, locked while this process lives."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, base: Path | None = None) -> SocketDir:
        """A new locked folder under ``base``, after removing stale ones there."""
        base = base or socket_base()
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))  # mode 0700
        try:
            fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else holds it
        removed = sweep_stale(base, keep=path.name)
        if removed:
            logger.info("removed %d proxy socket folder(s) left by ended hosts", removed)
        return cls(path, fd)

    def close(self) -> None:
        """Remove the folder (its sockets and lock first), then let the lock go."""
        if self._lock_fd is None:
            return
        try:
            _remove_folder(self.path.parent, self.path.name, own=True)
        except OSError as exc:
            logger.debug("proxy socket folder %s left in place: %s", self.path, exc)
        os.close(self._lock_fd)
        self._lock_fd = None


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)  # fmt: skip


def sweep_stale(base: Path, *, keep: str | None = None, now: float | None = None) -> int:
    """Remove this user's proxy socket folders in ``base`` whose host has ended; returns
    how many went. Errors leave a folder in place (logged at debug level)."""
    now = time.time() if now is None else now
    removed = 0
    try:
        names = [n for n in os.listdir(base) if n.startswith(PREFIX) and n != keep]
    except OSError:
        return 0
    for name in names:
        try:
            if _remove_folder(base, name, own=False, now=now):
                removed += 1
        except OSError as exc:
            logger.debug("proxy socket folder %s left in place: %s", name, exc)
    return removed


def _remove_folder(base: Path, name: str, *, own: bool, now: float = 0.0) -> bool:
    """Remove ``base/name`` when it is this user's proxy folder and stale (or ``own``):
    its sockets, its lock, then itself. Returns whether it went."""
    with contextlib.ExitStack() as stack:
        bfd = _open_dir(base)
        stack.callback(os.close, bfd)
        try:
            dfd = _open_dir(name, bfd)  # O_NOFOLLOW: a link named like a folder fails here
        except NotADirectoryError:
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False
            raise
        stack.callback(os.close, dfd)
        st = os.fstat(dfd)
        if st.st_uid != os.getuid():
            return False  # someone else's
        entries = os.listdir(dfd)
        sockets: list[str] = []
        for entry in entries:
            mode = os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mode
            if entry == LOCK and stat.S_ISREG(mode):
                continue
            if not stat.S_ISSOCK(mode):
                return False  # not a folder as this module makes them: left alone
            sockets.append(entry)
        if not own and not _stale(dfd, entries, sockets, base / name, now - st.st_mtime):
            return False
        for entry in [*sockets, *([LOCK] if LOCK in entries else [])]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=dfd)
        os.rmdir(name, dir_fd=bfd)
    return True


def _stale(dfd: int, entries: list[str], sockets: list[str], path: Path, age: float) -> bool:
    if LOCK not in entries:  # a folder from before the lock
        return age >= LEGACY_AGE_S and not any(_listening(path / s) for s in sockets)
    lfd = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        fcntl.flock(lfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its host is alive
    finally:
        os.close(lfd)  # a lock taken here goes with the descriptor
    return True


def _listening(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(str(path))
    except BlockingIOError:
        return True  # a full backlog: a server is there
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        s.close()
    return True
