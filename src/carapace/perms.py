"""The home is private to its user: folders 0700, files 0600 (issue 12 item 11).

``v2.db`` and its WAL hold every conversation's metadata and approval reply codes, session
folders hold messages and transcripts, group folders the agents' memory. Other OS users of
the machine must read none of it:

* every entry point (the CLI, the host, the runner) sets ``umask 0o077`` first
  (:func:`private_umask`), so whatever carapace creates is owner-only;
* ``carapace init`` and the host's start tighten what an older version created
  (:func:`secure_home`: the home and its top folders 0700, ``v2.db`` and its WAL/SHM 0600);
* ``carapace doctor`` lists anything in the home readable or writable by group or others
  (:func:`wide_entries`) with the ``chmod`` that fixes it.

Runners run as the same user, so 0600 files stay readable by them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

PRIVATE_UMASK = 0o077
MAX_SCAN = 20_000  # entries doctor looks at (a home with more is reported as capped)


def private_umask() -> int:
    """Set ``umask 0o077`` for this process; returns the previous mask."""
    return os.umask(PRIVATE_UMASK)


def make_private(path: Path) -> None:
    """Drop group and other bits of ``path`` (never through a link; only our own files)."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
            return
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            os.chmod(path, mode & ~0o077)


def secure_home(root: Path, data_dir: Path, groups_dir: Path, central_db: Path) -> None:
    """Owner-only modes on the home, its top folders and the central DB files."""
    for path in (root, data_dir, groups_dir, data_dir / "v2-sessions", root / "carapace.toml"):
        make_private(path)
    for name in ("", "-wal", "-shm", "-journal"):
        make_private(Path(f"{central_db}{name}"))


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            st = os.lstat(folder)
        except OSError:
            continue
        yield folder, st
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))
                    elif not entry.is_symlink():
                        try:
                            yield Path(entry.path), entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
        except OSError:
            continue


def wide_entries(root: Path, limit: int = MAX_SCAN) -> tuple[list[tuple[Path, int]], bool]:
    """Entries under ``root`` (links excluded, sockets included) whose mode grants anything
    to group or others, with their mode; the bool says the scan stopped at ``limit``."""
    found: list[tuple[Path, int]] = []
    for n, (path, st) in enumerate(_walk(root)):
        if n >= limit:
            return found, True
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            found.append((path, mode))
    return found, False
