"""File-change notification for session folders: inotify through ctypes, or polling.

DESIGN §3: each side wakes as soon as the other side commits. The host's ``inbound.db``
uses ``journal_mode=PERSIST``: a commit writes the database file (``IN_MODIFY``) and then
zeroes the header of ``<db>-journal`` (``IN_MODIFY``, the commit point), so a watch on the
*folder* filtered to both names sees every commit; the runner's ``outbound.db`` uses
``TRUNCATE`` (the journal's truncation is the commit point; in ``DELETE`` mode, a NanoClaw
process's, its removal).

``DirWatcher`` watches folders (or single files)::

    w = DirWatcher()
    w.add(session_dir, names={"inbound.db", "inbound.db-journal"})
    changed = w.wait(5.0)        # blocks up to 5 s; the watched paths that had events
    w.drain()                    # non-blocking
    w.fileno()                   # for select()/asyncio add_reader; None when polling
    w.close()

Mid-commit wakes (issue 19). A commit is many writes: the journal first, then the database
pages, then the journal's zeroed header. Each raises ``IN_MODIFY``, so a reader woken by the
first one reads *during* the commit, meets the writer's lock and sleeps in SQLite's busy
handler (1, 2, 5 ms…), and its shared lock in turn makes the writer's next commit wait. With
``settle=True`` the kernel is asked only for the events that end a commit (``COMMIT_MASK``:
SQLite closes the journal once its lock is dropped, ``IN_CLOSE_WRITE``, or in ``DELETE``
mode removes it), so the writes of a commit, and of the folder's other files, wake no one;
and a folder's events are reported only once every watched ``*-journal`` is absent, empty or
its header zeroed (one ``lstat`` each, and a read of the 28-byte header of a journal that
is not empty: :func:`journal_idle`). A transaction left open, or a hot journal, delays the wake until it
ends; callers poll anyway.

Each side's own commits wake no one (issue 19). The host and a runner share a folder: a
folder watch hears every journal of it closed, the other side's (the change looked for)
and the watcher's own side's (a wake for nothing, one per commit on each side). So where
a watched journal exists as a regular file, it is watched itself (``IN_CLOSE_WRITE``, the
link not followed) and the folder's watch drops ``IN_CLOSE_WRITE``. A journal deleted,
moved, replaced or made a link (``DELETE`` mode, a NanoClaw runner, an agent) puts that
folder back on the folder watch with ``COMMIT_MASK``, and the change is reported: a wake
can come late or for nothing, never go missing.

A notification only says "look now": callers re-read the database and must also poll
now and then (a notification can be coalesced, or missed while a folder is re-created).
Where inotify is unavailable (not Linux, or out of watches) the same API polls: it compares
the ``stat`` of the folder's files every ``poll_interval`` seconds, and ``fileno()`` is None.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import stat
import struct
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from carapace.log import get_logger

logger = get_logger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_MOVED_FROM = 0x00000040
IN_DONT_FOLLOW = 0x02000000
IN_ONLYDIR = 0x01000000
IN_MASK_CREATE = 0x10000000  # (Linux 4.18: EEXIST rather than replace another watch's mask)
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

# IN_DELETE: in DELETE journal mode a commit ends with the journal's removal, the one event
# guaranteed to come after the new data is readable. No IN_ATTRIB: as root SQLite fchowns a
# journal every time it opens it, so a *read* raised an event, the reader re-read, and the
# two sides woke each other forever (a CPU core spent while any runner lived).
WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY | IN_DELETE
# ``settle=True`` watches ask only for the events that can end a commit: SQLite closes a
# rollback journal once the transaction's lock is dropped (IN_CLOSE_WRITE, after its zeroed
# header in PERSIST mode, its truncation in TRUNCATE mode) or removes it (IN_DELETE, DELETE
# mode); IN_MOVED_TO is a file put in place whole. No IN_MODIFY: a commit is a dozen writes
# (three per journaled page), each a wake of the reader for nothing, and the other files of
# the folder (the other side's database, a log) raise them too.
COMMIT_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE
JOURNAL_HEADER_BYTES = 28  # what a PERSIST commit zeroes (SQLite's pager.c, zeroJournalHdr)
# the folder's watch while its journals are watched as files: a file put in place or
# removed; a journal's own name among them puts the folder back on COMMIT_MASK
FOLDER_MASK = IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE
# a journal's own watch: closed after a write (a commit's end), or gone from its name
JOURNAL_MASK = IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW
# what can change a folder's file (FolderWatch): closed after a write, made, removed,
# renamed in or out, its mode or times set; and the folder itself removed or renamed. No
# IN_MODIFY: the watches share the runner's instance, and a process of the agent writing
# a log into its folder would wake the runner's wait at every write (a write ends with the
# close; the cache's ``lstat`` check sees a change of size or time anyway)
_FOLDER_CHANGE_MASK = (IN_CLOSE_WRITE | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM
                       | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)  # fmt: skip
_EVENT = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


class _Inotify:
    """A thin ctypes binding of inotify_init1 / inotify_add_watch / inotify_rm_watch."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, "inotify needs Linux")
        # the C library this process already has (no ``ctypes.util.find_library``: it runs
        # ``ldconfig`` and imports subprocess and tempfile, at every runner's start)
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        init = libc.inotify_init1
        init.argtypes = [ctypes.c_int]
        init.restype = ctypes.c_int
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def add_watch(self, path: Path, mask: int) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def rm_watch(self, wd: int) -> None:
        self._rm(self.fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        """All queued events as (wd, mask, name); [] when none are queued."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            if not data:
                return events
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                raw = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                events.append((wd, mask, os.fsdecode(raw)))

    def close(self) -> None:
        os.close(self.fd)


def journal_idle(path: str) -> bool:
    """No transaction in progress by the rollback journal at ``path``: it is empty (a
    ``TRUNCATE`` commit's end) or its 28-byte header is all zeros (a ``PERSIST`` commit's
    end: SQLite zeroes it). A transaction writes the header as it starts journaling (the
    page size in it is never zero; the magic number follows at the journal's sync). A
    link, or any other kind of file, is never followed or read and counts as busy;
    ``FileNotFoundError`` when there is none. Opened without blocking (a FIFO put in its
    place between the ``lstat`` and the open fails the read: ``OSError``)."""
    st = os.lstat(path)
    if st.st_size == 0:
        return True
    if not stat.S_ISREG(st.st_mode):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return not any(os.pread(fd, JOURNAL_HEADER_BYTES, 0))
    finally:
        os.close(fd)


class DirWatcher:
    """Watch folders for file changes; inotify when available, else ``stat`` polling."""

    def __init__(self, *, poll_interval: float = 1.0, use_inotify: bool = True) -> None:
        self.poll_interval = poll_interval
        self._names: dict[Path, frozenset[str] | None] = {}
        self._journals: dict[Path, tuple[str, ...]] = {}  # settle=True: journals to check
        self._wds: dict[int, Path] = {}
        self._by_path: dict[Path, int] = {}
        self._journal_wds: dict[int, Path] = {}  # a journal's own watch -> its folder
        self._journal_wds_of: dict[Path, list[int]] = {}  # folder -> its journals' watches
        self._snapshots: dict[Path, dict[str, tuple[int, int, int]]] = {}
        self._pending: set[Path] = set()
        self._next_poll = 0.0
        self._wake_fd: int | None = None  # readable: ``wait`` returns (interrupt_on)
        # folders watched for :class:`FolderWatch` (on this same inotify instance): their
        # events are kept apart and never reported as changes of the watched paths
        self._folder_wds: dict[int, str] = {}
        self._folder_by: dict[str, int] = {}
        self._folder_changes: set[str] = set()
        self._folder_lost = False
        self._inotify: _Inotify | None = None
        if use_inotify:
            try:
                self._inotify = _Inotify()
            except (OSError, AttributeError) as exc:
                logger.info("inotify unavailable (%s); polling every %.1fs", exc, poll_interval)

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    def add(self, path: Path, names: Iterable[str] | None = None, *, settle: bool = False) -> None:
        """Watch ``path`` (a folder, or a file); ``names`` limits a folder watch to those files.
        ``settle``: report the folder only while each ``*-journal`` among ``names`` is empty or
        absent (between commits, see the module note).

        Re-adding a path replaces its name filter.
        """
        path = Path(path)
        self._names[path] = frozenset(names) if names is not None else None
        journals = tuple(sorted(n for n in names or () if n.endswith("-journal")))
        if settle and journals:
            self._journals[path] = journals
        else:
            self._journals.pop(path, None)
        if self._inotify is not None:
            # always ask the kernel: for the same folder it returns the same watch, for a
            # folder deleted and made again under the same path (whose IN_IGNORED may not
            # have been drained yet) a new one, which replaces the stale mapping
            self._unwatch_journals(path)
            try:
                mask = COMMIT_MASK if path in self._journals else WATCH_MASK
                wd = self._inotify.add_watch(path, mask | IN_DELETE_SELF | IN_MOVE_SELF)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "no such folder", str(path)) from None
                logger.warning("inotify watch failed (%s); falling back to polling", exc)
                self._fall_back()
            else:
                old = self._by_path.get(path)
                if old is not None and old != wd:
                    self._wds.pop(old, None)
                self._wds[wd] = path
                self._by_path[path] = wd
                if path in self._journals:
                    self._watch_journals(path)
                return
        self._snapshots[path] = self._snapshot(path)

    def _watch_journals(self, path: Path) -> None:
        """Watch ``path``'s journals as files and narrow its folder watch to FOLDER_MASK;
        when one is not a regular file now (or cannot be watched) the folder keeps
        COMMIT_MASK. Called once its folder watch is set."""
        assert self._inotify is not None
        wds: list[int] = []
        try:
            for name in self._journals[path]:
                journal = path / name
                if not stat.S_ISREG(os.lstat(journal).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", str(journal))
                wd = self._inotify.add_watch(journal, JOURNAL_MASK)
                wds.append(wd)
                self._journal_wds[wd] = path
            self._inotify.add_watch(path, FOLDER_MASK | IN_DELETE_SELF | IN_MOVE_SELF)
        except OSError:  # (the folder's watch has COMMIT_MASK still)
            for wd in wds:
                self._journal_wds.pop(wd, None)
                with contextlib.suppress(OSError):
                    self._inotify.rm_watch(wd)
            return
        self._journal_wds_of[path] = wds

    def _unwatch_journals(self, path: Path, *, refold: bool = False) -> None:
        """Drop ``path``'s journal watches; ``refold``: its folder watch takes COMMIT_MASK
        again (a journal left its name: every commit's end is heard from the folder)."""
        wds = self._journal_wds_of.pop(path, None)
        if wds is None or self._inotify is None:
            return
        for wd in wds:
            self._journal_wds.pop(wd, None)
            with contextlib.suppress(OSError):  # (gone already: IN_IGNORED follows)
                self._inotify.rm_watch(wd)
        if refold:
            with contextlib.suppress(OSError):  # (the folder is gone: IN_IGNORED follows)
                self._inotify.add_watch(path, COMMIT_MASK | IN_DELETE_SELF | IN_MOVE_SELF)

    def remove(self, path: Path) -> None:
        path = Path(path)
        self._names.pop(path, None)
        self._journals.pop(path, None)
        self._snapshots.pop(path, None)
        self._pending.discard(path)
        self._unwatch_journals(path)
        wd = self._by_path.pop(path, None)
        if wd is not None:
            self._wds.pop(wd, None)
            if self._inotify is not None:
                self._inotify.rm_watch(wd)

    def paths(self) -> list[Path]:
        return list(self._names)

    def fileno(self) -> int | None:
        """The inotify descriptor to select on (readable = call ``drain()``); None when polling."""
        return self._inotify.fd if self._inotify is not None else None

    def drain(self) -> set[Path]:
        """The watched paths that had events since the last call; never blocks."""
        changed = set(self._pending)
        self._pending.clear()
        unsettled: set[Path] = set()
        if self._inotify is not None:
            for wd, mask, name in self._inotify.read():
                if mask & IN_Q_OVERFLOW:
                    changed.update(self._names)  # events were lost: everything may have changed
                    self._folder_lost = True
                    continue
                watched = self._folder_wds.get(wd)
                if watched is not None:  # a FolderWatch's folder: kept apart
                    self._folder_event(wd, watched, mask, name)
                    continue
                folder = self._journal_wds.get(wd)
                if folder is not None:  # a journal's own watch
                    if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                        self._unwatch_journals(folder, refold=True)
                        changed.add(folder)
                    else:
                        unsettled.add(folder)
                    continue
                path = self._wds.get(wd)
                if path is None:
                    continue
                if (
                    mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
                    and name
                    and path in self._journal_wds_of
                    and name in self._journals[path]
                ):
                    self._unwatch_journals(path, refold=True)  # a journal left its name
                if mask & IN_IGNORED:  # the folder went away; a later add() re-watches it
                    self._wds.pop(wd, None)
                    if self._by_path.get(path) == wd:  # not a newer watch of a new folder
                        self._by_path.pop(path, None)
                    changed.add(path)
                    continue
                wanted = self._names.get(path)
                if wanted is None or not name or name in wanted:
                    if name and path in self._journals:
                        unsettled.add(path)
                    else:
                        changed.add(path)
        else:
            unsettled = self._poll_changes()
        for path in unsettled - changed:
            if self._settled(path):
                changed.add(path)
        return changed

    def _settled(self, path: Path) -> bool:
        """No transaction in progress in ``path``'s watched databases: each journal is
        absent, empty or its header zeroed (:func:`journal_idle`)."""
        for name in self._journals.get(path, ()):
            try:
                if not journal_idle(os.path.join(path, name)):
                    return False
            except FileNotFoundError:
                continue
            except OSError:
                return True  # cannot tell: report, the reader copes
        return True

    # --- folders watched for FolderWatch (the same inotify instance) ----------------------

    def watch_folder(self, folder: str) -> bool:
        """Watch ``folder``'s files for :meth:`folder_changes` (see :class:`FolderWatch`);
        False when it cannot be (no inotify, a missing folder, a folder watched already
        for changes of its own)."""
        if folder in self._folder_by:
            return True
        if self._inotify is None:
            return False
        try:
            wd = self._inotify.add_watch(Path(folder), _FOLDER_CHANGE_MASK | IN_ONLYDIR
                                         | IN_DONT_FOLLOW | IN_MASK_CREATE)  # fmt: skip
        except OSError:
            return False  # (EEXIST: the folder is watched for a change of its own)
        self._folder_wds[wd] = folder
        self._folder_by[folder] = wd
        return True

    def folder_changes(self) -> set[str] | None:
        """The paths written, made, removed or renamed in the :meth:`watch_folder` folders
        since the last call; None when anything may have changed (events lost, a folder
        gone: it is watched again when asked). The events of the watched paths read on
        the way are kept for the next :meth:`drain` or :meth:`wait`."""
        if self._inotify is not None:
            self._pending.update(self.drain())
        out, lost = self._folder_changes, self._folder_lost
        self._folder_changes, self._folder_lost = set(), False
        return None if lost else out

    def unwatch_folders(self) -> None:
        if self._inotify is not None:
            for wd in self._folder_wds:
                self._inotify.rm_watch(wd)
        self._folder_wds.clear()
        self._folder_by.clear()

    def _folder_event(self, wd: int, folder: str, mask: int, name: str) -> None:
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
            self._folder_lost = True
            self._folder_wds.pop(wd, None)
            if self._folder_by.get(folder) == wd:
                del self._folder_by[folder]
            if not mask & IN_IGNORED and self._inotify is not None:
                self._inotify.rm_watch(wd)
        elif name:
            self._folder_changes.add(os.path.join(folder, name))

    def interrupt_on(self, fd: int | None) -> None:
        """``fd`` (non-blocking, e.g. ``signal.set_wakeup_fd``'s pipe): when it is readable
        ``wait`` empties it and returns at once, changes or not."""
        self._wake_fd = fd

    def wait(self, timeout: float) -> set[Path]:
        """Block until some watched path changes, ``timeout`` seconds pass or the
        :meth:`interrupt_on` descriptor is written to."""
        deadline = time.monotonic() + max(0.0, timeout)
        changed = self.drain()
        while not changed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return changed
            fd = self.fileno()
            fds = [f for f in (fd, self._wake_fd) if f is not None]
            step = remaining if fd is not None else min(self.poll_interval, remaining)
            if fds:
                try:
                    ready, _, _ = select.select(fds, [], [], step)
                except InterruptedError:
                    ready = []
            else:
                time.sleep(step)
                ready = []
            if self._wake_fd is not None and self._wake_fd in ready:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_fd, 512):
                        pass
                return self.drain()
            if fd is not None and not ready:
                return self.drain()
            changed = self.drain()
        return changed

    def close(self) -> None:
        self._drop_inotify()

    def _drop_inotify(self) -> None:
        """Close the inotify instance and forget every watch on it (a FolderWatch's
        folders are then told lost: its callers fall back to their own checks)."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._folder_wds:
            self._folder_lost = True
        self._folder_wds.clear()
        self._folder_by.clear()
        self._wds.clear()
        self._by_path.clear()
        self._journal_wds.clear()
        self._journal_wds_of.clear()

    def __enter__(self) -> DirWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- polling ---------------------------------------------------------------------------

    def _fall_back(self) -> None:
        self._drop_inotify()
        for p in self._names:
            self._snapshots[p] = self._snapshot(p)

    def _snapshot(self, path: Path) -> dict[str, tuple[int, int, int]]:
        wanted = self._names.get(path)
        out: dict[str, tuple[int, int, int]] = {}
        try:
            if path.is_dir():
                entries = [(e.name, e.path) for e in os.scandir(path)]
            else:
                entries = [("", str(path))]
        except OSError:
            return out
        for name, full in entries:
            if wanted is not None and name and name not in wanted:
                continue
            try:
                st = os.stat(full, follow_symlinks=False)
            except OSError:
                continue
            out[name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return out

    def _poll_changes(self) -> set[Path]:
        now = time.monotonic()
        if now < self._next_poll:
            return set()
        self._next_poll = now + self.poll_interval * 0.5
        changed: set[Path] = set()
        for path in list(self._names):
            snap = self._snapshot(path)
            if snap != self._snapshots.get(path):
                changed.add(path)
            self._snapshots[path] = snap
        return changed


class FolderWatch:
    """Which files of some folders changed since the last look, never blocking (a cache's
    invalidation: ``runner/prompt.py``'s memory files).

    :meth:`watch` a folder *before* reading a file in it; :meth:`changed` then names every
    path closed after a write, made, removed or renamed in a watched folder since its last
    call, or is None when anything may have changed (events were lost, a folder was
    removed or renamed: its watch is gone, :meth:`watch` adds it again). Where inotify is
    unavailable :meth:`watch` says False and the caller keeps its own checks.

    The watches live on ``watcher``'s inotify instance (the runner's :class:`DirWatcher`):
    a process's second instance counts against the user's ``fs.inotify.max_user_instances``
    (128 by default, shared by every runner of the user), and a runner taking two left a
    later runner's watcher without one (polling) past ~63."""

    def __init__(self, watcher: DirWatcher) -> None:
        self._watcher = watcher
        self._closed = False

    def watch(self, folder: str) -> bool:
        """Whether ``folder`` is watched (added now when it was not)."""
        return not self._closed and self._watcher.watch_folder(folder)

    def changed(self) -> set[str] | None:
        return set() if self._closed else self._watcher.folder_changes()

    def close(self) -> None:
        """No more watches (the watcher itself goes on)."""
        self._closed = True
        self._watcher.unwatch_folders()
