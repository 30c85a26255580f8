"""Issue 12 item 8: symlink-swap races (check, then open) in the runner's ``read_file`` and
in the host's reading of an outbox.

A thread flips a name between a plain file and a link to a secret outside the allowed
folder, as fast as it can, while the tool (or the host) reads that name again and again:
a check-then-open reader sometimes opens the link (issue: 45 leaks in 85,000 tries); an
open-then-``fstat`` confined reader never does. Bounded iterations, zero leaks allowed."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from carapace.db.session import SessionPaths
from carapace.host.outbox_files import copy_to_inbox, read_outbox_files
from carapace.runner.workspace import Workspace, WorkspacePolicy

SECRET = b"SECRET-host-only-bytes"
TRIES = 4000


@contextlib.contextmanager
def flipping(name: Path, secret: Path) -> Iterator[threading.Event]:
    """A thread swapping ``name`` between a plain file and a link to ``secret``."""
    stop = threading.Event()
    folder = name.parent

    def flip() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            link, plain = folder / f".l{n}", folder / f".p{n}"
            os.symlink(secret, link)
            os.replace(link, name)
            plain.write_bytes(b"harmless\n")
            os.replace(plain, name)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as finely as CPython allows
    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(10)
        sys.setswitchinterval(old)


def _count_leaks(read: Callable[[], bytes], tries: int = TRIES) -> int:
    return sum(SECRET in read() for _ in range(tries))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "id_rsa"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def test_read_file_never_follows_a_swapped_link(tmp_path: Path, secret: Path) -> None:
    group, session, tmp = tmp_path / "group", tmp_path / "session", tmp_path / "tmp"
    for d in (group, session, tmp):
        d.mkdir()
    ws = Workspace(WorkspacePolicy(group_dir=group, session_dir=session, tmp_dir=tmp))
    target = group / "notes.txt"
    target.write_bytes(b"harmless\n")
    os.symlink(secret, group / "plain-link")
    # the confinement itself: a link out of the roots is refused outright
    assert ws.call("read_file", {"path": "plain-link"}).is_error

    def read() -> bytes:
        return ws.call("read_file", {"path": "notes.txt"}).content.encode()

    with flipping(target, secret):
        leaks = _count_leaks(read)
    assert leaks == 0, f"read_file leaked the secret {leaks} times in {TRIES} tries"


def _outbox(tmp_path: Path) -> tuple[SessionPaths, Path]:
    paths = SessionPaths(tmp_path / "sess")
    (paths.outbox / "r1").mkdir(parents=True)
    name = paths.outbox / "r1" / "report.txt"
    name.write_bytes(b"harmless\n")
    return paths, name


def test_host_outbox_read_never_follows_a_swapped_link(tmp_path: Path, secret: Path) -> None:
    paths, name = _outbox(tmp_path)

    def read() -> bytes:
        return b"".join(f.data for f in read_outbox_files(paths, "r1", ["report.txt"]).files)

    with flipping(name, secret):
        leaks = _count_leaks(read)
    assert leaks == 0, f"the host read the secret {leaks} times in {TRIES} tries"


def test_a2a_copy_never_follows_a_swapped_link(tmp_path: Path, secret: Path) -> None:
    paths, name = _outbox(tmp_path)
    dst = SessionPaths(tmp_path / "other")
    dst.root.mkdir()
    count = iter(range(10**9))

    def read() -> bytes:
        mid = f"m{next(count)}"
        copy_to_inbox(paths, "r1", ["report.txt"], dst, mid)
        with contextlib.suppress(FileNotFoundError):
            return (dst.inbox / mid / "report.txt").read_bytes()
        return b""

    with flipping(name, secret):
        leaks = _count_leaks(read, TRIES // 4)
    assert leaks == 0, f"the a2a copy took the secret {leaks} times"
