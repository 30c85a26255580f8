"""The host's Unix sockets are owner-only without a process-wide umask change.

The proxy bound each runner's socket inside ``umask(0o177)``. The umask is per process, so
a folder made by another thread in that moment (a new chat's session folder, made off the
event loop) got mode 0600: no one could enter it without root's override, the session's
runner (in its sandbox) failed with "Permission denied" at every start, and the chat was
never answered (seen in ``bench concurrent``: 99 chats answered, one not, for good)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from carapace.packages.egress import RegistryProxy
from carapace.proxy.keys import KeyStore
from carapace.proxy.server import EgressProxy, SessionRoute
from carapace.unixsock import private_unix_socket, start_private_server


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def no_umask(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(mask: int) -> int:
        raise AssertionError(f"the process umask was changed to {mask:o}")

    old = os.umask(0o022)  # a permissive one: the sockets must be 0600 all the same
    monkeypatch.setattr(os, "umask", refused)
    yield
    monkeypatch.undo()
    os.umask(old)


def test_owner_only_sockets_never_change_the_process_umask(tmp_path: Path, no_umask: None) -> None:
    plain = private_unix_socket(tmp_path / "plain.sock")
    plain.close()
    assert _mode(tmp_path / "plain.sock") == 0o600

    async def served() -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"ok")
            await w.drain()
            w.close()

        server = await start_private_server(handler, tmp_path / "cli.sock", limit=1024)
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "cli.sock"))
        assert await reader.read() == b"ok"
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(served())
    assert _mode(tmp_path / "cli.sock") == 0o600

    async def proxied() -> int:
        proxy = EgressProxy(KeyStore({}), socket_dir=tmp_path / "proxy")
        path = proxy.open_session(SessionRoute("sess-1", "ag-1"))
        await asyncio.sleep(0)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))  # it listens
        s.close()
        mode = _mode(path)
        await proxy.close()
        return mode

    assert asyncio.run(proxied()) == 0o600

    registry = RegistryProxy(tmp_path / "reg.sock")
    try:
        assert _mode(tmp_path / "reg.sock") == 0o600
    finally:
        registry.close()


def test_a_folder_made_while_sockets_are_bound_keeps_its_mode(tmp_path: Path) -> None:
    """The race itself: folders made by one thread while another binds sockets."""
    import threading

    old = os.umask(0o077)
    try:
        stop = threading.Event()

        def bind_many() -> None:
            i = 0
            while not stop.is_set():
                private_unix_socket(tmp_path / f"s{i % 4}.sock").close()
                i += 1

        t = threading.Thread(target=bind_many)
        t.start()
        try:
            made = []
            for i in range(3000):
                d = tmp_path / f"d{i}"
                d.mkdir()
                made.append(d)
        finally:
            stop.set()
            t.join()
        assert {_mode(d) for d in made} == {0o700}
    finally:
        os.umask(old)


def test_a_session_folder_left_0600_is_healed_before_a_spawn(tmp_path: Path) -> None:
    """Folders an older version made 0600 (the race above) get 0700 back before a runner
    starts, and a link in the folder's place is not followed."""
    from carapace.host.host_runners import heal_folder_mode

    broken = tmp_path / "sess-broken"
    broken.mkdir(mode=0o700)
    os.chmod(broken, 0o600)
    heal_folder_mode(broken)
    assert _mode(broken) == 0o700
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o600)  # one it would heal, were the link followed
    (tmp_path / "sess-link").symlink_to(target)
    heal_folder_mode(tmp_path / "sess-link")
    assert _mode(target) == 0o600
