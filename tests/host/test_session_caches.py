"""What the host keeps per session only to save work is bounded (a host serving new
chats for months must not grow by every session it ever saw): the caches are cleared when
full, and the work they saved is simply done again."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from carapace.bench.host_benches import SinkChannel, add_chats, event, make_host
from carapace.config import Home
from carapace.db import session as session_db
from carapace.db.session import SessionPaths, init_session_folder, open_inbound
from carapace.host import sessions as host_sessions


def test_the_hosts_per_session_caches_stay_bounded_and_routing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_sessions, "FACTS_KEPT", 3)
    host = make_host(Home(tmp_path / "home"), SinkChannel(), runners=False)

    async def main() -> dict[str, int]:
        await host.start()
        try:
            chats = add_chats(host, 7)
            sizes: dict[str, int] = {}
            for round_ in range(2):  # the second round: every session was evicted once
                for chat in chats:
                    r = await host.route(event(f"hi {round_}", chat))
                    assert r.routed, r
                    sid = r.routed[0].session_id
                    host.sessions.note_out_seq(sid, 1)
                    await host.deliver_once(sid)
                    mgr = host.sessions
                    for name in ("_touched", "_present", "_out_max"):
                        sizes[name] = max(sizes.get(name, 0), len(getattr(mgr, name)))
                    for name in ("_cursors",):
                        sizes[name] = max(sizes.get(name, 0), len(getattr(host.delivery, name)))
            return sizes
        finally:
            await host.stop()
            host.close()

    sizes = asyncio.run(main())
    assert sizes == {"_touched": 3, "_present": 3, "_out_max": 3, "_cursors": 3}
    # every message of both rounds is in its session's inbound.db
    counts = []
    for folder in sorted((tmp_path / "home" / "data" / "v2-sessions").glob("*/*")):
        conn = sqlite3.connect(folder / "inbound.db")
        try:
            counts.append(conn.execute("SELECT count(*) FROM messages_in").fetchone()[0])
        finally:
            conn.close()
    assert counts == [2] * 7


def test_checked_inbound_files_are_bounded_and_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_db, "CHECKED_KEPT", 2)
    monkeypatch.setattr(session_db, "_checked_inbound", set())
    folders = [SessionPaths(tmp_path / f"s{i}") for i in range(3)]
    for paths in folders:
        init_session_folder(paths)
        open_inbound(paths).close()
        assert len(session_db._checked_inbound) <= 2
    # the first one was dropped: opened again it is checked again (a lost table comes back)
    conn = sqlite3.connect(folders[0].inbound)
    conn.execute("DROP TABLE messages_in")
    conn.commit()
    conn.close()
    conn = open_inbound(folders[0])
    try:
        assert conn.execute("SELECT count(*) FROM messages_in").fetchone()[0] == 0
    finally:
        conn.close()
