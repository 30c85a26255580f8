"""The host test rig (a Host on a temp home with a fake channel and clock)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from carapace.channels.fake import FakeChannel, make_event
from carapace.db import groups, messaging, users
from carapace.db.session import SessionPaths, insert_message_out, open_outbound
from carapace.db.sessions import Session, list_sessions
from carapace.host.host import Host
from carapace.host.pool import FakeBackend, FakeHandle
from carapace.jsonutil import dumps
from carapace.timefmt import FakeClock, sqlite_ts


@dataclass
class Rig:
    host: Host
    channel: FakeChannel
    threaded: FakeChannel
    backend: FakeBackend
    clock: FakeClock
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self, timeout: float = 10.0) -> None:
        """Run the loop until every exited runner is handled and the host's background
        tasks (exit handling, claim resets, drains) are done: event-based, no fixed sleep."""

        async def _settle() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                await asyncio.sleep(0.002)
                exited = [sid for sid, r in self.host.pool.running.items()
                          if isinstance(r.handle, FakeHandle) and r.handle._done.is_set()]  # fmt: skip
                busy = [t for t in self.host._tasks if not t.done()]
                if not exited and not busy:
                    return
            raise AssertionError("the host did not settle")

        self.run(_settle())

    @property
    def db(self) -> Any:
        return self.host.db

    def agent(self, folder: str = "ag") -> str:
        return groups.create_agent_group(self.db, folder, folder, now=self.clock.now()).id

    def chat(self, platform_id: str = "chat-1", *, policy: str = "public", is_group: bool = False,
             channel: str = "fake") -> str:  # fmt: skip
        return messaging.create_messaging_group(
            self.db, channel, platform_id, name=platform_id, unknown_sender_policy=policy,
            is_group=is_group, now=self.clock.now(),
        ).id  # fmt: skip

    def wire(self, mg: str, ag: str, **kw: Any) -> None:
        kw.setdefault("engage_mode", "pattern")
        if kw["engage_mode"] == "pattern":
            kw.setdefault("engage_pattern", ".")
        messaging.create_wiring(self.db, mg, ag, now=self.clock.now(), **kw)

    def user(self, uid: str, role: str | None = None, member_of: str | None = None) -> None:
        users.upsert_user(self.db, uid, uid.split(":")[0], uid, now=self.clock.now())
        if role:
            users.grant_role(self.db, uid, role, now=self.clock.now())
        if member_of:
            users.add_member(self.db, uid, member_of, now=self.clock.now())

    def sessions(self) -> list[Session]:
        return list_sessions(self.db)

    def one_chat_session(self, platform_id: str = "chan") -> Session:
        """An agent group wired to one chat, and the session its first message made."""
        ag = self.agent()
        mg = self.chat(platform_id)
        self.wire(mg, ag)
        self.run(self.host.route(make_event("hi", platform_id=platform_id, id="m1")))
        [s] = self.sessions()
        return s

    def paths(self, s: Session) -> SessionPaths:
        return self.host.sessions.paths(s)

    def stored(self) -> None:
        """Wait until the rows the host stored on its own (notes to agents, answers) are
        in their files: they are journaled, then written by the sessions' pumps."""
        self.run(self.host.sessions.settle())

    def inbound(self, s: Session, sql: str = "SELECT * FROM messages_in ORDER BY seq") -> list[Any]:
        from carapace.db.session import open_inbound

        conn = open_inbound(self.paths(s))
        try:
            return [dict(r) for r in conn.execute(sql)]
        finally:
            conn.close()

    def reply(self, s: Session, content: Any, *, kind: str = "chat", channel_type: str | None = None,
              platform_id: str | None = None, thread_id: str | None = None,
              in_reply_to: str | None = None, id: str | None = None) -> str:  # fmt: skip
        """What a runner would write: one messages_out row (odd seq)."""
        conn = open_outbound(self.paths(s))
        try:
            rid = (
                id
                or f"out-{self.clock.now().timestamp()}-{len(conn.execute('SELECT id FROM messages_out').fetchall())}"
            )
            insert_message_out(conn, {
                "id": rid, "kind": kind, "timestamp": sqlite_ts(self.clock.now()),
                "channel_type": channel_type, "platform_id": platform_id, "thread_id": thread_id,
                "in_reply_to": in_reply_to,
                "content": content if isinstance(content, str) else dumps(content),
            })  # fmt: skip
            return rid
        finally:
            conn.close()

    def ack(self, s: Session, mid: str, status: str, when: str | None = None) -> None:
        conn = open_outbound(self.paths(s))
        try:
            conn.execute(
                "INSERT OR REPLACE INTO processing_ack VALUES (?, ?, ?)",
                (mid, status, when or sqlite_ts(self.clock.now())),
            )
        finally:
            conn.close()

    def acks(self, s: Session) -> dict[str, str]:
        conn = open_outbound(self.paths(s))
        try:
            return {
                r[0]: r[1] for r in conn.execute("SELECT message_id, status FROM processing_ack")
            }
        finally:
            conn.close()

    def delivered(self, s: Session) -> list[dict[str, Any]]:
        return self.inbound(s, "SELECT * FROM delivered ORDER BY delivered_at")
