"""Work a NanoClaw home left behind runs at carapace's start, with no new message (issue 18,
item 1): a pending message, a one-off task due soon and a per-minute task in a session the
work index (``carapace_session_work``) does not name, plus a session holding only a task."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carapace.channels.fake import FakeChannel
from carapace.config import Home, Settings
from carapace.host.host import Host, HostOptions
from carapace.sandbox.process import SubprocessBackend
from carapace.testing.v1fixtures import make_nanoclaw_v2_home
from carapace.timefmt import FakeClock, iso

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TASK_ONLY = "sess-1760000000000-taskonly"


def _leave_work(v2_root: Path, session_dir: Path, agent_group_id: str, mg: str) -> None:
    soon = iso(NOW + timedelta(seconds=15))
    inbound = sqlite3.connect(str(session_dir / "inbound.db"), isolation_level=None)
    inbound.execute(
        "INSERT INTO messages_in VALUES ('msg-2', 6, 'chat', ?, 'pending', NULL, NULL, 0, "
        '\'telegram:42\', \'telegram\', NULL, \'{"text":"left behind","sender":"Me"}\')',
        (iso(NOW - timedelta(minutes=5)),),
    )
    inbound.execute(
        "INSERT INTO messages_in VALUES ('task-once', 8, 'task', ?, 'pending', ?, NULL, 0, "
        "'telegram:42', 'telegram', NULL, '{\"prompt\":\"once\",\"script\":null}')",
        (iso(NOW), soon),
    )
    inbound.execute(
        "INSERT INTO messages_in VALUES ('task-minute', 10, 'task', ?, 'pending', ?, "
        "'* * * * *', 0, 'telegram:42', 'telegram', NULL, '{\"prompt\":\"tick\"}')",
        (iso(NOW), iso(NOW + timedelta(seconds=40))),
    )
    inbound.close()
    # A second session that holds nothing but a task due in an hour.
    conn = sqlite3.connect(str(v2_root / "data" / "v2.db"), isolation_level=None)
    t = "2026-01-10T08:00:00.000Z"
    conn.execute("INSERT INTO sessions VALUES (?, ?, ?, 'thread-9', NULL, 'active', 'stopped', "
                 "?, ?)", (TASK_ONLY, agent_group_id, mg, t, t))  # fmt: skip
    conn.close()
    other = session_dir.parent / TASK_ONLY
    other.mkdir()
    src = sqlite3.connect(str(session_dir / "inbound.db"))
    dst = sqlite3.connect(str(other / "inbound.db"))
    src.backup(dst)
    src.close()
    dst.execute("DELETE FROM messages_in")
    dst.execute(
        "INSERT INTO messages_in VALUES ('task-hour', 2, 'task', ?, 'pending', ?, NULL, 0, "
        "'telegram:42', 'telegram', 'thread-9', '{\"prompt\":\"hourly\"}')",
        (iso(NOW), iso(NOW + timedelta(hours=1))),
    )
    dst.commit()
    dst.close()


def _index(home: Home) -> dict[str, str]:
    conn = sqlite3.connect(str(home.central_db))
    try:
        return dict(conn.execute("SELECT session_id, next_due FROM carapace_session_work"))
    finally:
        conn.close()


def test_start_indexes_what_nanoclaw_left_and_the_sweep_runs_it(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    _leave_work(v2.root, v2.session_dir, v2.agent_group_id, v2.messaging_group_id)
    clock = FakeClock(NOW)
    channel = FakeChannel("telegram")
    home = Home(v2.root)

    async def scenario() -> None:
        host = Host(home, settings=Settings(runner_idle_exit_s=5), channels=[channel],
                    backend=SubprocessBackend(), clock=clock,
                    options=HostOptions(sockets=False, watch=False))  # fmt: skip
        await host.start(background=False)
        try:
            index = _index(home)
            assert index[v2.session_id] <= iso(NOW)  # the pending message: due now
            assert index[TASK_ONLY] == iso(NOW + timedelta(hours=1))  # the task's own time
            report = await host.sweep_once(NOW)
            assert v2.session_id in report.woken
            assert TASK_ONLY not in report.woken and TASK_ONLY not in report.visited
            # The runner answers the message left behind, with no new message routed.
            deadline = asyncio.get_running_loop().time() + 30
            while not any("left behind" in t for t in channel.texts()):
                assert asyncio.get_running_loop().time() < deadline, channel.texts()
                await host.deliver_once(v2.session_id)
                await asyncio.sleep(0.05)
            # The task-only session is visited when its task is due.
            later = NOW + timedelta(hours=1, seconds=1)
            report = await host.sweep_once(later)
            assert TASK_ONLY in report.woken
        finally:
            await host.stop()
            host.close()

    asyncio.run(scenario())


def _bare_host(home: Home) -> Host:
    return Host(home, settings=Settings(), channels=[FakeChannel("telegram")],
                backend=SubprocessBackend(), clock=FakeClock(NOW),
                options=HostOptions(sockets=False, watch=False))  # fmt: skip


def test_rebuild_leaves_idle_sessions_out(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    conn = sqlite3.connect(str(v2.session_dir / "inbound.db"), isolation_level=None)
    conn.execute("UPDATE messages_in SET status='completed'")
    conn.execute("INSERT INTO delivered VALUES ('out-1', '2026-01-10T08:00:02.000Z')")
    conn.close()
    home = Home(v2.root)

    async def scenario() -> int:
        host = _bare_host(home)
        await host.start(background=False)
        try:
            return await host.rebuild_work_index()
        finally:
            await host.stop()
            host.close()

    # out-1 is above a cursor that does not exist yet: visited once to find it delivered.
    assert asyncio.run(scenario()) == 1


def test_a_nanoclaw_file_gets_the_host_indexes_at_start_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building an index reads the whole table (~20 ms per 100,000 rows): done by the
    start's worker thread, never by the event loop's first open of the file."""
    import threading

    import carapace.db.session as session_db

    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    _leave_work(v2.root, v2.session_dir, v2.agent_group_id, v2.messaging_group_id)
    built: list[int] = []
    real = session_db.upgrade_inbound

    def noting(conn: sqlite3.Connection) -> None:
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        if not have >= session_db.HOST_INDEXES.keys():
            built.append(threading.get_ident())
        real(conn)

    monkeypatch.setattr(session_db, "upgrade_inbound", noting)
    monkeypatch.setattr(session_db, "_checked_inbound", set())
    home = Home(v2.root)

    async def scenario() -> int:
        host = _bare_host(home)
        await host.start(background=False)
        try:
            await host.sweep_once(NOW)
            return threading.get_ident()
        finally:
            await host.stop()
            host.close()

    loop_thread = asyncio.run(scenario())
    assert built and loop_thread not in built
    for inbound in (
        v2.session_dir / "inbound.db",
        v2.session_dir.parent / TASK_ONLY / "inbound.db",
    ):
        conn = sqlite3.connect(str(inbound))
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        conn.close()
        assert have >= session_db.HOST_INDEXES.keys(), (inbound, have)
