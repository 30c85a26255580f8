"""All-or-nothing for ``migrate-v1`` (issue 14 item 5): a snapshot of what the import may
change, put back when it fails half-way (a partly corrupted v1 DB, a full disk, a bug).

What the import writes: the central DB (rows, and the migrations ``open_home`` applies), the
``inbound.db`` of existing sessions (imported tasks), and new files and folders (group and
session folders, copied group files, Claude state). Existing files other than those DBs are
never rewritten (copies skip existing targets). So the snapshot is a SQLite backup of the
central DB and of every existing session ``inbound.db`` (byte copies with their journals:
no host runs during an import), plus the set of paths in the home; rolling back writes the
copies back and removes every path that was not there before (never following a link).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from carapace.config import Home

logger = logging.getLogger(__name__)


def _paths(root: Path) -> set[Path]:
    found: set[Path] = set()
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        found.update(base / n for n in dirnames)
        found.update(base / n for n in filenames)
    found.add(root)
    return found


SIDECARS = ("", "-journal", "-wal", "-shm")


class Snapshot:
    """``with Snapshot(home) as snap: …; snap.keep()`` — without ``keep`` (an exception,
    or a fatal report) the home is put back as it was on entry."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._kept = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._dbs: dict[Path, Path] = {}  # original -> its copy
        self._before: set[Path] = set()
        self._existed = home.root.exists()

    def __enter__(self) -> Snapshot:
        self._tmp = tempfile.TemporaryDirectory(prefix="carapace-migrate-undo-")
        self._before = _paths(self.home.root)
        dbs = [self.home.central_db]
        if self.home.sessions_dir.is_dir():
            dbs += sorted(self.home.sessions_dir.glob("*/*/inbound.db"))
        for i, db in enumerate(dbs):
            for suffix in SIDECARS:  # byte copies: no host runs, nothing writes them now
                path = Path(f"{db}{suffix}")
                if path.is_file() and not path.is_symlink():
                    copy = Path(self._tmp.name) / f"{i}.db{suffix}"
                    shutil.copyfile(path, copy)
                    self._dbs[path] = copy
        return self

    def keep(self) -> None:
        self._kept = True

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._kept:
                self.restore()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def restore(self) -> None:
        """Put the snapshot's DBs back and remove every path made since."""
        for path, copy in self._dbs.items():
            shutil.copyfile(copy, path)
        after = _paths(self.home.root)
        for path in sorted(after - self._before, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        logger.info("migrate-v1: the home was put back as it was")
