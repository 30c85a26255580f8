"""Work a NanoClaw host left behind runs after a carapace host starts, without any new
message: the work index is rebuilt from the session files at every start (issue 18 item 1).

A NanoClaw-shaped home (SQL in NanoClaw's format, no ``carapace_session_work`` rows) with a
pending message, a one-off task due in 15 s, or a per-minute task. The clock is injected; the
sweep is driven by hand at the times the schedule names.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carapace.channels.fake import FakeChannel
from carapace.config import Home, Settings
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.testing.v1fixtures import V2Home, make_nanoclaw_v2_home
from carapace.timefmt import FakeClock, iso

T0 = datetime(2026, 6, 1, 6, 58, 0, tzinfo=UTC)


def _sql(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        for sql, args in statements:
            conn.execute(sql, args)
    finally:
        conn.close()


def _task(
    mid: str, seq: int, after: datetime, recurrence: str | None
) -> tuple[str, tuple[object, ...]]:
    return (
        "INSERT INTO messages_in VALUES (?, ?, 'task', '2026-06-01 06:00:00', 'pending', ?, ?, 0, "
        "'telegram:42', 'telegram', NULL, '{\"prompt\":\"p\",\"script\":null}')",
        (mid, seq, iso(after), recurrence),
    )


def _quiet(v2: V2Home) -> None:
    """The fixture's own work out of the way: its reply delivered, its daily task done."""
    _sql(
        v2.session_dir / "inbound.db",
        ("INSERT INTO delivered VALUES ('out-1', '2026-01-10 08:00:02')", ()),
        ("DELETE FROM messages_in WHERE id='task-1'", ()),
    )


def _host(v2: V2Home, clock: FakeClock, channel: FakeChannel) -> Host:
    return Host(Home(v2.root), settings=Settings(), clock=clock, channels=[channel],
                backend=FakeBackend(),
                options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip


def test_pending_message_and_undelivered_reply_run_at_start(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    _sql(
        v2.session_dir / "inbound.db",
        ("DELETE FROM messages_in WHERE id='task-1'", ()),
        ("INSERT INTO messages_in VALUES ('msg-2', 6, 'chat', '2026-06-01 06:57:00', 'pending', "
         "NULL, NULL, 0, 'telegram:42', 'telegram', NULL, '{\"text\":\"still there?\"}')", ()),
    )  # fmt: skip
    clock, channel = FakeClock(T0), FakeChannel("telegram")

    async def scenario() -> list[str]:
        host = _host(v2, clock, channel)
        await host.start(background=False)
        try:
            return (await host.sweep_once(clock.now())).woken
        finally:
            await host.stop()
            host.close()

    assert asyncio.run(scenario()) == [v2.session_id]
    assert channel.texts() == ["hello"]  # NanoClaw's undelivered out-1


@pytest.mark.parametrize(
    ("after", "recurrence"),
    [(T0 + timedelta(seconds=15), None), (T0 + timedelta(seconds=60), "* * * * *")],
    ids=["one-off-in-15s", "per-minute"],
)
def test_task_only_session_runs_when_due(
    tmp_path: Path, after: datetime, recurrence: str | None
) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    _quiet(v2)
    _sql(v2.session_dir / "inbound.db", _task("task-2", 6, after, recurrence))
    clock, channel = FakeClock(T0), FakeChannel("telegram")

    async def scenario() -> tuple[list[str], str | None, list[str]]:
        host = _host(v2, clock, channel)
        await host.start(background=False)
        try:
            early = (await host.sweep_once(clock.now())).woken
            nxt = host.sessions.next_work_due()
            clock.set(after)
            return early, nxt, (await host.sweep_once(clock.now())).woken
        finally:
            await host.stop()
            host.close()

    early, nxt, woken = asyncio.run(scenario())
    assert early == []  # not before its time
    assert nxt == iso(after)  # the host's timer is armed for it
    assert woken == [v2.session_id]


def test_session_with_nothing_to_do_stays_out_of_the_index(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    _quiet(v2)
    clock = FakeClock(T0)

    async def scenario() -> str | None:
        host = _host(v2, clock, FakeChannel("telegram"))
        await host.start(background=False)
        try:
            return host.sessions.next_work_due()
        finally:
            await host.stop()
            host.close()

    assert asyncio.run(scenario()) is None


def test_outbound_symlink_is_not_followed(tmp_path: Path) -> None:
    """outbound.db is agent-written: a link to another session's file is not read."""
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    _quiet(v2)
    out = v2.session_dir / "outbound.db"
    elsewhere = tmp_path / "other.db"
    out.rename(elsewhere)
    _sql(elsewhere, ("INSERT INTO messages_out VALUES ('out-9', 5, NULL, '2026-06-01', NULL, "
                     "NULL, 'chat', 'telegram:42', 'telegram', NULL, '{}')", ()))  # fmt: skip
    out.symlink_to(elsewhere)
    from carapace.db.session import SessionPaths
    from carapace.host.work_index import session_next_due

    paths = SessionPaths(v2.session_dir)
    assert session_next_due(paths, T0) is None
