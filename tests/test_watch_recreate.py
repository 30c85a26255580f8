"""A session folder deleted and made again under the same path is watched again, even when
the host re-adds it before it has drained the old folder's ``IN_IGNORED`` (the race that
left a re-made session's replies waiting for the sweep)."""

from __future__ import annotations

import shutil
from pathlib import Path

from carapace.watch import DirWatcher


def test_re_adding_a_remade_folder_before_draining_watches_the_new_one(tmp_path: Path) -> None:
    folder = tmp_path / "sess-1"
    folder.mkdir()
    with DirWatcher(poll_interval=0.05) as w:
        w.add(folder, names={"outbound.db"})
        shutil.rmtree(folder)
        folder.mkdir()
        w.add(folder, names={"outbound.db"})  # before the old watch's IN_IGNORED is read
        w.drain()  # the stale events (deletion, IN_IGNORED of the old watch)
        (folder / "outbound.db").write_bytes(b"x")
        assert folder in w.drain()
        (folder / "outbound.db").write_bytes(b"y")  # still watched after the old one's end
        assert folder in w.drain()


def test_re_adding_the_same_folder_keeps_one_watch(tmp_path: Path) -> None:
    folder = tmp_path / "sess-2"
    folder.mkdir()
    with DirWatcher(poll_interval=0.05) as w:
        w.add(folder, names={"outbound.db"})
        w.add(folder, names={"outbound.db"})
        (folder / "outbound.db").write_bytes(b"x")
        assert w.drain() == {folder}
