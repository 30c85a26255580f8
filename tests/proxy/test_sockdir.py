"""Proxy socket folders left by hosts that ended without ``stop()`` are removed at the next
host's start; live hosts' folders, other users' folders, links and anything that does not
look like a proxy folder are left alone.

Before: every host killed or crashed left ``/tmp/carapace-proxy-*`` with its sockets, and
nothing removed them (about 400 were found on one machine)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.proxy import sockdir
from carapace.proxy.keys import KeyStore
from carapace.proxy.server import EgressProxy, SessionRoute
from carapace.proxy.sockdir import LEGACY_AGE_S, LOCK, PREFIX, SocketDir, sweep_stale
from carapace.unixsock import private_unix_socket

HOST = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from carapace.proxy.sockdir import SocketDir
    from carapace.unixsock import private_unix_socket
    d = SocketDir.create(Path(sys.argv[1]))
    s = private_unix_socket(d.path / "s0-abc.sock")
    s.listen(1)
    print(d.path, flush=True)
    if sys.argv[2] == "die":
        os._exit(0)  # a crash: no close(), the folder stays; the kernel drops the lock
    sys.stdin.readline()
    """
)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder of its own for each test, as ``tmp_path``, but short: sockets are bound in
    it, and a socket's path has at most 107 bytes, which pytest's folder under a longer
    user name passed (``/tmp/pytest-of-<user>/pytest-<n>/<test name>/...``)."""
    path = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _host(base: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST, str(base), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    assert path.is_dir()
    return proc, path


def _dead_socket(path: Path) -> None:
    """A socket file nobody listens on (what a killed host leaves)."""
    private_unix_socket(path).close()


def _legacy(base: Path, name: str, *, age: float) -> Path:
    """A folder as hosts made them before the lock: sockets only."""
    d = base / f"{PREFIX}{name}"
    d.mkdir(mode=0o700)
    _dead_socket(d / "s0-old.sock")
    t = time.time() - age
    os.utime(d, (t, t))
    return d


def test_create_makes_an_owner_only_locked_folder_and_close_removes_it(short_tmp: Path) -> None:
    d = SocketDir.create(short_tmp)
    assert d.path.parent == short_tmp and d.path.name.startswith(PREFIX)
    assert stat.S_IMODE(os.lstat(d.path).st_mode) == 0o700
    assert (d.path / LOCK).is_file()
    _dead_socket(d.path / "s0-x.sock")
    d.close()
    assert not d.path.exists()
    d.close()  # twice is harmless


def test_a_crashed_hosts_folder_goes_at_the_next_start(short_tmp: Path) -> None:
    proc, left = _host(short_tmp, "die")
    assert proc.wait(timeout=30) == 0
    assert left.is_dir() and (left / "s0-abc.sock").exists()  # what a crash leaves
    d = SocketDir.create(short_tmp)
    assert not left.exists()
    assert sorted(p.name for p in short_tmp.iterdir()) == [d.path.name]
    d.close()


def test_live_hosts_folders_stay(short_tmp: Path) -> None:
    proc, other = _host(short_tmp, "live")  # another process, alive
    try:
        same = SocketDir.create(short_tmp)  # another host in this process
        mine = SocketDir.create(short_tmp)
        assert other.is_dir() and (other / "s0-abc.sock").exists()
        assert same.path.is_dir()
        assert sweep_stale(short_tmp) == 0
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    # its process has ended without close(): now it is stale
    assert sweep_stale(short_tmp, keep=mine.path.name) == 1
    assert not other.exists() and same.path.is_dir()
    same.close()
    mine.close()


def test_folders_from_before_the_lock(short_tmp: Path) -> None:
    old = _legacy(short_tmp, "old", age=LEGACY_AGE_S + 60)
    young = _legacy(short_tmp, "young", age=1)  # may be a host between mkdir and lock
    serving = _legacy(short_tmp, "serving", age=LEGACY_AGE_S + 60)
    listener = private_unix_socket(serving / "s1-live.sock")
    listener.listen(1)
    t = time.time() - LEGACY_AGE_S - 60
    os.utime(serving, (t, t))
    try:
        assert sweep_stale(short_tmp) == 1
        assert not old.exists()
        assert young.is_dir() and serving.is_dir()
    finally:
        listener.close()


def test_links_are_never_followed(short_tmp: Path) -> None:
    """A link named like a proxy folder (anyone can make one in /tmp) pointing at a folder
    that looks stale: the target keeps everything."""
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    target = _legacy(elsewhere, "target", age=LEGACY_AGE_S + 60)
    (short_tmp / f"{PREFIX}link").symlink_to(target)
    assert sweep_stale(short_tmp) == 0
    assert (target / "s0-old.sock").exists()
    assert (short_tmp / f"{PREFIX}link").is_symlink()


def test_a_lock_that_is_a_link_leaves_the_folder_alone(short_tmp: Path) -> None:
    victim = short_tmp / "victim"
    victim.write_text("keep")
    d = short_tmp / f"{PREFIX}badlock"
    d.mkdir(mode=0o700)
    _dead_socket(d / "s0.sock")
    (d / LOCK).symlink_to(victim)
    assert sweep_stale(short_tmp) == 0
    assert d.is_dir() and (d / LOCK).is_symlink() and victim.read_text() == "keep"


def test_a_folder_with_other_files_is_left_alone(short_tmp: Path) -> None:
    d = _legacy(short_tmp, "notes", age=LEGACY_AGE_S + 60)
    (d / "notes.txt").write_text("not a socket")
    t = time.time() - LEGACY_AGE_S - 60
    os.utime(d, (t, t))
    assert sweep_stale(short_tmp) == 0
    assert (d / "notes.txt").read_text() == "not a socket"


def test_files_and_others_folders_are_not_touched(short_tmp: Path) -> None:
    (short_tmp / f"{PREFIX}file").write_text("x")
    if os.getuid() != 0:
        pytest.skip("making another user's folder needs root")  # the file case ran
    d = _legacy(short_tmp, "theirs", age=LEGACY_AGE_S + 60)
    os.chown(d, 65534, 65534)
    assert sweep_stale(short_tmp) == 0
    assert d.is_dir() and (short_tmp / f"{PREFIX}file").read_text() == "x"


def test_the_proxy_uses_a_locked_folder_and_removes_it_on_close(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sockdir, "socket_base", lambda: short_tmp)
    stale = _legacy(short_tmp, "stale", age=LEGACY_AGE_S + 60)

    async def run() -> Path:
        proxy = EgressProxy(KeyStore({}))
        path = proxy.open_session(SessionRoute("s1", "ag"))
        await asyncio.sleep(0)
        folder = path.parent
        assert folder.parent == short_tmp and (folder / LOCK).is_file()
        assert not stale.exists()  # swept when the proxy made its folder
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))  # it listens
        client.close()
        await proxy.close()
        return folder

    folder = asyncio.run(run())
    assert not folder.exists()


def test_a_proxy_used_again_after_its_folder_was_released_makes_a_new_locked_one(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host stopped and started again (the same object): its second folder has its lock
    and goes at the second stop; nothing is left in the base (an empty folder without a
    lock was, for every such restart)."""
    monkeypatch.setattr(sockdir, "socket_base", lambda: short_tmp)
    proxy = EgressProxy(KeyStore({}))
    first = proxy.socket_dir()
    proxy.release_dir()
    assert not first.exists()
    second = proxy.socket_dir()
    assert (second / LOCK).is_file()
    proxy.release_dir()
    assert list(short_tmp.iterdir()) == []
