"""The ``trig`` fixture: a Host on a temp home with one wired session (sched_helpers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sched_helpers import TaskRig, _host

from carapace.config import Home, Settings
from carapace.db import groups, messaging
from carapace.timefmt import FakeClock


@pytest.fixture
def trig(tmp_path: Any, clock: FakeClock) -> Iterator[TaskRig]:
    loop = asyncio.new_event_loop()
    home = Home(tmp_path / "home")
    host = _host(home, clock, Settings(max_tries=2, runner_idle_exit_s=0, timezone="UTC"))
    loop.run_until_complete(host.start(background=False))
    ag = groups.create_agent_group(host.db, "ag", "ag", now=clock.now()).id
    mg = messaging.create_messaging_group(host.db, "fake", "chan", name="chan",
                                          unknown_sender_policy="public", now=clock.now()).id  # fmt: skip
    messaging.create_wiring(host.db, mg, ag, now=clock.now(), engage_mode="pattern",
                            engage_pattern=".")  # fmt: skip
    session, _ = host.sessions.resolve(ag, mg, None, "shared", now=clock.now())
    r = TaskRig(host, clock, loop, session)
    yield r
    r.run(r.host.stop())
    r.host.close()
    loop.close()
