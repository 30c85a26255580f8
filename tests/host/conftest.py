"""Fixtures for host tests: a Host on a temp home with a fake clock, a recording channel and a
fake runner backend; driven by single passes (no timers, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from host_rig import Rig

from carapace.admin.dispatch import dispatch
from carapace.channels.fake import FakeChannel
from carapace.config import Home, Settings
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.timefmt import FakeClock


@pytest.fixture
def rig(tmp_path: Any, clock: FakeClock) -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    channel = FakeChannel("fake")
    threaded = FakeChannel("threaded", supports_threads=True)
    backend = FakeBackend()
    home = Home(tmp_path / "home")
    host = Host(
        home, settings=Settings(max_tries=5, runner_idle_exit_s=0), clock=clock,
        channels=[channel, threaded], backend=backend,
        options=HostOptions(sockets=False, watch=False, cleanup_orphans=False),
        admin=dispatch,
    )  # fmt: skip
    r = Rig(host, channel, threaded, backend, clock, loop)
    assert host.sessions.ingest is not None
    # a row is lone when its session is idle, whatever the time since its last row (the
    # stream rule by time, LONE_GAP_S, has tests of its own): no path chosen by test speed
    host.sessions.ingest.lone_gap_s = 0.0
    # nor journaled because a loaded machine made its file's commit slow (the tests of that
    # fallback set their own wait)
    host.sessions.ingest.lone_wait_s = 60.0
    r.run(host.start(background=False))
    yield r
    r.run(host.stop())
    host.close()
    loop.close()
