"""Helpers for tests/sched: a Host on a temp home with a fake clock and a fake runner backend, plus helpers to play the
runner for task rows (ack what is due) and to read a session's task rows and history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carapace.admin.dispatch import dispatch
from carapace.channels.fake import FakeChannel
from carapace.config import Home, Settings
from carapace.db.session import open_inbound, open_outbound
from carapace.db.sessions import Session
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.jsonutil import dumps
from carapace.timefmt import FakeClock, iso, sqlite_ts


@dataclass
class TaskRig:
    host: Host
    clock: FakeClock
    loop: asyncio.AbstractEventLoop
    session: Session

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def schedule(self, task_id: str, when: datetime, recurrence: str | None = None,
                 **content: Any) -> None:  # fmt: skip
        doc = {"prompt": "report", "script": None, **content}
        self.host.sessions.write_message(
            self.session,
            {"id": task_id, "kind": "task", "timestamp": sqlite_ts(self.clock.now()),
             "process_after": iso(when), "recurrence": recurrence, "series_id": task_id,
             "platform_id": "chan", "channel_type": "fake", "content": dumps(doc)},
            now=self.clock.now(), due=iso(when),
        )  # fmt: skip

    def rows(self, where: str = "kind='task'") -> list[dict[str, Any]]:
        conn = open_inbound(self.host.sessions.paths(self.session))
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM messages_in WHERE {where} "
                                                  "ORDER BY seq")]  # fmt: skip
        finally:
            conn.close()

    def ack(self, mid: str, status: str = "completed") -> None:
        conn = open_outbound(self.host.sessions.paths(self.session))
        try:
            conn.execute("INSERT OR REPLACE INTO processing_ack VALUES (?, ?, ?)",
                         (mid, status, sqlite_ts(self.clock.now())))  # fmt: skip
        finally:
            conn.close()

    def play_runner(self, status: str = "completed") -> list[str]:
        """Ack every due pending task row (what a runner would do at ``now``)."""
        done = []
        now = self.clock.now()
        for r in self.rows("kind='task' AND status='pending'"):
            if r["process_after"] is None or r["process_after"] <= iso(now):
                self.ack(r["id"], status)
                done.append(r["id"])
        return done

    def sweep(self, now: datetime | None = None) -> Any:
        """A sweep pass, and the writes it started (a look waits a bounded time for them:
        on a loaded machine one can still be under way when the pass returns)."""
        if now is not None:
            self.clock.set(now)
        report = self.run(self.host.sweep_once(self.clock.now()))
        self.run(self.host.sessions.drain_writes())
        return report

    def history(self, series_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.host.db.execute(
            "SELECT * FROM carapace_task_runs WHERE series_id=? ORDER BY scheduled_for",
            (series_id,))]  # fmt: skip

    def restart(self) -> None:
        """A new Host on the same home (the old one 'crashed')."""
        self.run(self.host.stop())
        self.host.close()
        self.host = _host(self.host.home, self.clock, self.host.settings)
        self.run(self.host.start(background=False))


def _host(home: Home, clock: FakeClock, settings: Settings) -> Host:
    return Host(home, settings=settings, clock=clock, channels=[FakeChannel("fake")],
                backend=FakeBackend(),
                options=HostOptions(sockets=False, watch=False, cleanup_orphans=False),
                admin=dispatch)  # fmt: skip
