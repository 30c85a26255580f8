"""A new session's folder and DBs (schemas: several durable commits) are made in a worker
thread when a message is routed, not on the host's event loop (issue 19: no loop stall);
a second message for the same new session waits for them instead of writing into a
half-made folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from carapace.config import Home
from carapace.db import groups, messaging
from carapace.db.central import open_central
from carapace.db.session import SessionPaths
from carapace.db.sessions import list_sessions
from carapace.host import sessions as sessions_mod
from carapace.host.ingest import Ingest
from carapace.host.ingest_journal import IngestJournal
from carapace.host.sessions import SessionManager


def _manager(tmp_path: Path) -> tuple[sqlite3.Connection, SessionManager, str, str]:
    """A home with one agent group and one chat: (central DB, manager, group, chat)."""
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    db = open_central(home.central_db)
    ag = groups.create_agent_group(db, "agent", "agent").id
    mg = messaging.create_messaging_group(db, "fake", "chat-1", name="chat-1").id
    return db, SessionManager(home, db), ag, mg


def test_new_session_folder_is_made_off_the_loop_once_for_concurrent_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, mgr, ag, mg = _manager(tmp_path)
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


def test_routing_does_not_stat_a_known_session_file_and_a_deleted_folder_is_made_again_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router trusts a session file it has seen (a stat per message on the loop was
    ~5 % of a burst's loop time); when the folder was deleted meanwhile, the write finds
    the file gone, the folder is made again once, and every row of the burst is stored in
    the new file, in order. (Each writer used to make the folder and write again on its
    own: with the making slow, five folders were made, and the rows' order followed who
    came back first, failing this test now and then under load.)"""
    db, mgr, ag, mg = _manager(tmp_path)
    now = datetime.now(UTC)
    loop_stats: list[str] = []
    real_stat = os.stat

    def watching_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if threading.current_thread() is threading.main_thread() and str(path).endswith(
            "inbound.db"
        ):
            loop_stats.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    # the router's way in, as in the host: journaled, then written by the session's pump
    journal = IngestJournal(tmp_path / "ingest.db")
    mgr.ingest = Ingest(mgr, journal)

    async def route(i: int) -> int | None:
        session, _ = await mgr.resolve_async(ag, mg, None, "shared", now=now)
        heard: list[int | None] = []

        async def outcome(seq: int | None, exc: BaseException | None) -> None:
            assert exc is None, exc
            heard.append(seq)

        await mgr.accept(session, {"id": f"m{i}", "kind": "chat",
                                   "timestamp": "2026-01-01T00:00:00Z", "content": "{}"},
                         now=now, outcome=outcome)  # fmt: skip
        await mgr.settle([session.id], through_failures=False)
        return heard[0]

    async def scenario() -> tuple[Path, int]:
        await route(0)  # a new session: its folder is made
        session, _ = await mgr.resolve_async(ag, mg, None, "shared", now=now)
        gen = mgr.writers.generation(session.id)
        monkeypatch.setattr(os, "stat", watching_stat)
        await asyncio.gather(*(route(i) for i in range(1, 4)))
        assert loop_stats == []  # known file: no stat on the loop
        monkeypatch.setattr(os, "stat", real_stat)
        real_make = mgr._make_folder

        async def slow_make(*a: Any, **kw: Any) -> None:  # the others' turns come first
            for _ in range(20):
                await asyncio.sleep(0)
            await real_make(*a, **kw)

        monkeypatch.setattr(mgr, "_make_folder", slow_make)
        shutil.rmtree(mgr.paths(session).root)
        seqs = await asyncio.gather(*(route(i) for i in range(4, 9)))
        assert all(isinstance(q, int) for q in seqs)  # all stored, none refused
        assert mgr.writers.generation(session.id) == gen + 1  # made again once
        await mgr.drain_writes()
        return mgr.paths(session).inbound, gen

    try:
        inbound_path, _ = asyncio.run(scenario())
        inbound = sqlite3.connect(inbound_path)
        try:
            ids = [r[0] for r in inbound.execute("SELECT id FROM messages_in ORDER BY seq")]
        finally:
            inbound.close()
        assert ids == [f"m{i}" for i in range(4, 9)]
    finally:
        journal.close()
        mgr.writers.close()
        db.close()


def test_a_new_sessions_row_is_synced_before_its_first_message_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The central DB commits at ``synchronous=NORMAL`` (a WAL synced at checkpoints). A
    new session's row is synced (its WAL fsynced, in the worker that makes the folder)
    before the router takes the message: a power loss just after could otherwise roll the
    row back and leave the acknowledged message in a folder no session names."""
    db, mgr, ag, mg = _manager(tmp_path)
    wal = f"{mgr.central_path}-wal"
    synced: list[tuple[int, int]] = []  # (thread, sessions visible to another reader)
    real = os.fsync

    def recording(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == wal:
            other = sqlite3.connect(f"file:{mgr.central_path}?mode=ro", uri=True)
            try:
                rows = other.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            finally:
                other.close()
            synced.append((threading.get_ident(), rows))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    now = datetime.now(UTC)

    async def route_twice() -> int:
        await mgr.resolve_async(ag, mg, None, "shared", now=now)
        first = len(synced)
        await mgr.resolve_async(ag, mg, None, "shared", now=now)  # the session exists now
        assert len(synced) == first  # no sync per message
        return threading.get_ident()

    loop_thread = asyncio.run(route_twice())
    assert len(synced) == 1
    thread, rows = synced[0]
    assert rows == 1  # the row was committed before the sync, which made it durable
    assert thread != loop_thread  # off the event loop
    db.close()
