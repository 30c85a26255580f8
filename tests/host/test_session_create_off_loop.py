"""A new session's folder and DBs (schemas: several durable commits) are made in a worker
thread when a message is routed, not on the host's event loop (issue 19: no loop stall);
a second message for the same new session waits for them instead of writing into a
half-made folder."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.config import Home
from carapace.db import groups, messaging
from carapace.db.central import open_central
from carapace.db.session import SessionPaths
from carapace.db.sessions import list_sessions
from carapace.host import sessions as sessions_mod
from carapace.host.sessions import SessionManager


def test_new_session_folder_is_made_off_the_loop_once_for_concurrent_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    db = open_central(home.central_db)
    ag = groups.create_agent_group(db, "agent", "agent").id
    mg = messaging.create_messaging_group(db, "fake", "chat-1", name="chat-1").id
    mgr = SessionManager(home, db)
    made: list[int] = []
    seen_ready: list[bool] = []
    real = sessions_mod.init_session_folder

    def recording(paths: SessionPaths) -> None:
        made.append(threading.get_ident())
        # the row is visible already, but the session is not ready until its folder is
        seen_ready.extend(mgr.ready(s) for s in list_sessions(db))
        real(paths)

    monkeypatch.setattr(sessions_mod, "init_session_folder", recording)
    now = datetime.now(UTC)

    async def scenario() -> tuple[list[tuple[str, bool]], int]:
        got = await asyncio.gather(
            *(mgr.resolve_async(ag, mg, None, "shared", now=now) for _ in range(3))
        )
        return [(s.id, created) for s, created in got], threading.get_ident()

    try:
        got, loop_thread = asyncio.run(scenario())
        ids = {sid for sid, _ in got}
        assert len(ids) == 1
        assert [created for _, created in got] == [True, False, False]
        assert len(made) == 1 and made[0] != loop_thread  # once, in a worker thread
        session = mgr.get(ids.pop())
        assert session is not None
        assert seen_ready == [False] and mgr.ready(session)
        inbound = sqlite3.connect(mgr.paths(session).inbound)
        try:  # the folder was complete before any caller went on
            assert inbound.execute("SELECT COUNT(*) FROM messages_in").fetchone() == (0,)
        finally:
            inbound.close()
        # the synchronous path finds the folder made: nothing is made again
        again, created = mgr.resolve(ag, mg, None, "shared", now=now)
        assert (again.id, created) == (session.id, False) and len(made) == 1
    finally:
        db.close()
