"""The operations test rig: a host running on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from carapace.admin.dispatch import dispatch
from carapace.channels.fake import FakeChannel
from carapace.config import Home, Settings
from carapace.db import groups, messaging, sessions
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend


class LiveHost:
    """A started Host on a loop in a background thread; ``call(coro)`` runs on that loop."""

    def __init__(self, home: Home, settings: Settings | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = FakeChannel("fake")
        self.home = home

        async def make() -> Host:
            return Host(
                home, settings=settings or Settings(runner_idle_exit_s=0),
                channels=[self.channel], backend=FakeBackend(),
                options=HostOptions(sockets=False, watch=False, cleanup_orphans=False),
                admin=dispatch,
            )  # fmt: skip

        self.host: Host = self.call(make())
        self.call(self.host.start(background=False))

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def sync(self, fn: Any, *args: Any, **kw: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kw)

        return self.call(run())

    def wire_chat(self, platform_id: str, folder: str = "ag") -> None:
        def go() -> None:
            db = self.host.db
            ag = groups.get_agent_group_by_folder(db, folder)
            agid = ag.id if ag else groups.create_agent_group(db, folder, folder).id
            mg = messaging.create_messaging_group(
                db, "fake", platform_id, name=platform_id, unknown_sender_policy="public"
            ).id
            messaging.create_wiring(db, mg, agid, engage_mode="pattern", engage_pattern=".")

        self.sync(go)

    def runners_started(self) -> None:
        """Every session's runner start is over (its group folder made, a legacy transcript
        adopted), so a test may plant files there: the start runs a moment after the route
        that wakes it, and under load after the test's next line."""

        async def go() -> None:
            for s in sessions.list_sessions(self.host.db):
                await self.host.pool.wake_and_wait(s.id)

        self.call(go())

    def close(self) -> None:
        self.call(self.host.stop())
        self.sync(self.host.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
