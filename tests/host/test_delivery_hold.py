"""Issue 19: a delivery pass's outcomes are held a moment and carried by the session's next
write of rows (one commit for the reply's records and the next message), else committed
alone (host/delivery_hold.py); a host killed meanwhile re-sends that reply once, flagged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from host_rig import Rig
from test_ack_ride_along import _status, _turn, _wire, records_writes_fail
from test_delivery_once import CrashAfterSend, Watching, _intent_log, killed, started_host

from carapace.channels.fake import FakeChannel, make_event
from carapace.config import Home
from carapace.db import connection
from carapace.db.sessions import Session
from carapace.host import host_runners
from carapace.host.delivery_log import Records
from carapace.host.pool import FakeBackend
from carapace.host.send_intents import read_open
from carapace.timefmt import FakeClock


def _answered(rig: Rig, s: Session | None, text: str, mid: str) -> tuple[Session, str]:
    """A message routed, answered by "the runner" (a reply ``re-<mid>`` and its ack) and
    delivered: the reply's records are held."""
    s, row_id = _turn(rig, s, text, mid, reply_id=f"re-{mid}")
    rig.run(host_runners.after_commit(rig.host, s.id))
    return s, row_id


def _cursor(rig: Rig, s: Session) -> int | None:
    rows = rig.inbound(s, "SELECT seq FROM carapace_delivery_cursor")
    return rows[0]["seq"] if rows else None


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The file of every commit made (by name), counted as they happen."""
    made: list[str] = []
    real = connection._commit

    def counting(conn: sqlite3.Connection) -> None:
        made.append(Path(conn.execute("PRAGMA database_list").fetchone()[2]).name)
        real(conn)

    monkeypatch.setattr(connection, "_commit", counting)
    return made


def test_a_held_reply_record_rides_with_the_next_message_in_one_commit(
    rig: Rig, commits: list[str]
) -> None:
    _wire(rig)
    # no hold ends on its own here (the loop's clock is real: the 1 ms hold ran out while
    # the test read the files, and its commit alone could come before the next message's
    # write, once in a loaded run); the hold that ends alone has a test of its own below
    rig.host.delivery.hold.hold_s = rig.host.delivery.hold.brief_s = 60.0
    s, m1 = _answered(rig, None, "one", "m1")
    assert rig.channel.texts() == ["re one"]
    assert rig.host.delivery.hold.held(s.id)
    assert rig.delivered(s) == [] and _status(rig, s)[m1] == "pending"  # not yet
    commits.clear()
    rig.run(rig.host.route(make_event("two", platform_id="chan", id="m2")))
    assert commits.count("inbound.db") == 1  # the message, the reply's records, its ack
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["re-m1"]
    assert _status(rig, s)[m1] == "completed"
    assert any(r["id"].startswith("m2") for r in rig.inbound(s))
    assert _cursor(rig, s) is not None
    assert not rig.host.delivery.hold.held(s.id)
    assert read_open(_intent_log(rig.host)) == {}  # the reply's fate is known on disk


def test_held_records_are_committed_alone_when_no_write_comes(rig: Rig) -> None:
    _wire(rig)
    rig.host.delivery.hold.hold_s = 0.0
    s, m1 = _answered(rig, None, "one", "m1")

    async def committed() -> None:  # the timer's flush runs on the writer thread
        deadline = asyncio.get_running_loop().time() + 10
        while rig.host.delivery.hold.held(s.id) or rig.host.delivery.hold._tasks:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.002)

    rig.run(committed())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["re-m1"]
    assert _status(rig, s)[m1] == "completed"
    assert read_open(_intent_log(rig.host)) == {}


def test_records_that_fail_in_a_carry_are_given_back_and_the_message_stored(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wire(rig)
    s, _m1 = _answered(rig, None, "one", "m1")
    failing = records_writes_fail(monkeypatch)
    rig.run(rig.host.route(make_event("two", platform_id="chan", id="m2")))
    assert any(r["id"].startswith("m2") for r in rig.inbound(s))  # stored all the same
    assert rig.delivered(s) == []
    assert rig.host.delivery.hold.held(s.id)  # given back, held again
    failing[0] = False
    assert rig.run(rig.host.delivery.hold.flush_all())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["re-m1"]
    assert rig.channel.texts() == ["re one"]  # sent once


def test_a_message_whose_commit_fails_gives_the_records_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write carrying them fails as a whole (a full disk): the sender hears it, and the
    reply's records are held again, never lost."""
    _wire(rig)
    s, _m1 = _answered(rig, None, "one", "m1")
    real = connection._commit

    def full(conn: sqlite3.Connection) -> None:
        if Path(conn.execute("PRAGMA database_list").fetchone()[2]).name == "inbound.db":
            raise sqlite3.OperationalError("database or disk is full")
        real(conn)

    monkeypatch.setattr(connection, "_commit", full)
    now = rig.clock.now()
    row = rig.host.sessions.prepare_row(s, {
        "id": "m2", "kind": "chat", "timestamp": "2026-12-07T00:00:00Z", "platform_id": "chan",
        "channel_type": "fake", "thread_id": None, "content": '{"text": "two"}', "trigger": 1,
    }, now)  # fmt: skip
    with pytest.raises(sqlite3.OperationalError, match="full"):
        rig.run(rig.host.sessions.write_rows(s, [row], now))
    assert rig.host.delivery.hold.held(s.id)
    monkeypatch.setattr(connection, "_commit", real)
    assert rig.run(rig.host.delivery.hold.flush_all())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["re-m1"]


def test_stop_commits_held_records(rig: Rig) -> None:
    _wire(rig)
    s, m1 = _answered(rig, None, "one", "m1")
    assert rig.host.delivery.hold.held(s.id)
    rig.run(rig.host.stop())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["re-m1"]
    assert _status(rig, s)[m1] == "completed"


def test_stop_commits_records_a_cancelled_pass_never_held(rig: Rig) -> None:
    """A pass cancelled by the stop between a send and its end leaves its records unheld:
    the stop commits them too (else the reply would be re-sent at the next start)."""
    s = rig.one_chat_session()
    rig.reply(s, {"text": "r1"}, channel_type="fake", platform_id="chan", id="r1")
    real_hold = rig.host.delivery.hold.hold
    rig.host.delivery.hold.hold = lambda *a, **k: None  # type: ignore[method-assign]
    rig.run(rig.host.delivery.drain(s.id, rig.host.now))  # sent; its end never came
    rig.host.delivery.hold.hold = real_hold  # type: ignore[method-assign]
    assert not rig.host.delivery.hold.held(s.id) and rig.delivered(s) == []
    rig.run(rig.host.stop())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["r1"]
    assert read_open(_intent_log(rig.host)) == {}


def test_a_kill_while_a_reply_is_held_resends_it_once_flagged(
    tmp_path: Path, clock: FakeClock
) -> None:
    home = Home(tmp_path / "home")
    first = CrashAfterSend("fake")
    host, loop = started_host(home, clock, first)
    rig = Rig(host, first, first, FakeBackend(), clock, loop)
    s = rig.one_chat_session()
    rig.reply(s, {"text": "r1"}, channel_type="fake", platform_id="chan", id="r1")
    rig.run(host.delivery.drain(s.id, host.now))  # sent; its records held
    assert [m.message_out_id for m in first.sent] == ["r1"]
    assert host.delivery.hold.held(s.id)
    host.delivery.hold._held[s.id][1].cancel()  # the process dies before the timer
    killed(host, loop)

    second = Watching("fake", log=_intent_log(host))
    host2, loop2 = started_host(home, clock, second)
    try:
        loop2.run_until_complete(host2.deliver_once(s.id))
        assert [(m.message_out_id, m.resend) for m in second.messages] == [("r1", True)]
        assert second.messages[0].key == first.sent[0].key
        loop2.run_until_complete(host2.deliver_once(s.id))
        assert len(second.messages) == 1
        assert read_open(_intent_log(host2)) == {}
    finally:
        loop2.run_until_complete(host2.stop())
        host2.close()
        loop2.close()


def test_the_next_send_on_a_turn_channel_has_the_last_ones_fate_on_disk(rig: Rig) -> None:
    """A channel that cannot deduplicate: another session's send there waits until the
    held outcome of the last send there is committed (at most one unknown fate)."""
    ag = rig.agent()
    for chat in ("c1", "c2"):
        rig.wire(rig.chat(chat), ag)
        rig.run(rig.host.route(make_event("hi", platform_id=chat, id=f"m-{chat}")))
    a, b = sorted(rig.sessions(), key=lambda x: x.messaging_group_id or "")
    chats = {a.id: "c1", b.id: "c2"}
    seen: list[list[str]] = []

    class Checking(FakeChannel):
        async def deliver(self, platform_id: str, thread_id: str | None, message: Any) -> Any:
            seen.append([d["message_out_id"] for d in rig.delivered(a)])
            return await super().deliver(platform_id, thread_id, message)

    rig.host.adapters["fake"] = Checking("fake")
    rig.reply(a, {"text": "ra"}, channel_type="fake", platform_id=chats[a.id], id="ra")
    rig.reply(b, {"text": "rb"}, channel_type="fake", platform_id=chats[b.id], id="rb")
    rig.run(rig.host.delivery.drain(a.id, rig.host.now))
    assert rig.host.delivery.hold.held(a.id)
    rig.run(rig.host.delivery.drain(b.id, rig.host.now))
    assert seen == [[], ["ra"]]  # a's outcome was on disk before b's send


def test_taken_records_restore_under_newer_ones() -> None:
    rec = Records(key=(1, 0))
    rec.outcomes["r1"] = ("delivered", "p1", "t1")
    rec.attempts["r2"] = (1, "n1", "f1", "e1")
    rec.cursor = 5
    snap = rec.take()
    assert not rec and rec.key == (1, 0)
    rec.outcomes["r1"] = ("failed", None, "t2")  # newer: wins
    rec.attempts["r2"] = (2, "n2", "f2", "e2")
    rec.cursor = 7
    rec.restore(snap)
    assert rec.outcomes == {"r1": ("failed", None, "t2")}
    assert rec.attempts["r2"] == (3, "n2", "f1", "e2")  # counted once each, first kept
    assert rec.cursor == 7
    other = Records(key=(2, 0))
    other.restore(snap)  # of another file: nothing to write them to
    assert not other


def test_an_edit_naming_a_reply_by_its_row_id_reaches_the_platforms_message(rig: Rig) -> None:
    """The runner names its reply by the platform id in ``delivered``, or by the reply's
    row id when that row is not there yet (held a moment, or being written): both reach
    the message the platform knows; another id is passed on as it is."""
    s = rig.one_chat_session()
    rig.reply(s, {"text": "draft"}, channel_type="fake", platform_id="chan", id="r1")
    rig.run(rig.host.delivery.drain(s.id, rig.host.now))
    assert rig.host.delivery.hold.held(s.id) and rig.delivered(s) == []
    rig.reply(s, {"operation": "edit", "messageId": "r1", "text": "final"},
              channel_type="fake", platform_id="chan", id="r2")  # fmt: skip
    rig.reply(s, {"operation": "reaction", "messageId": "r1", "emoji": "👍"},
              channel_type="fake", platform_id="chan", id="r3")  # fmt: skip
    rig.reply(s, {"operation": "edit", "messageId": "pm-elsewhere", "text": "x"},
              channel_type="fake", platform_id="chan", id="r4")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    [pm] = [d["platform_message_id"] for d in rig.delivered(s) if d["message_out_id"] == "r1"]
    assert pm and pm != "r1"
    assert [e[2] for e in rig.channel.edits] == [pm, "pm-elsewhere"]
    assert [r[2] for r in rig.channel.reactions] == [pm]


def test_a_timer_flush_that_fails_unexpectedly_is_logged_and_its_records_kept(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _wire(rig)
    s, _m1 = _answered(rig, None, "one", "m1")
    hold = rig.host.delivery.hold
    real = rig.host.delivery.sessions.writers.call

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("writer gone wrong")

    monkeypatch.setattr(rig.host.delivery.sessions.writers, "call", broken)
    hold._held[s.id][1].cancel()

    async def the_timer() -> None:
        hold._due(s.id)  # what its moment runs
        await asyncio.gather(*hold._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # (the done callbacks)

    rig.run(the_timer())
    assert "not committed: RuntimeError('writer gone wrong')" in caplog.text
    assert rig.delivered(s) == [] and rig.host.delivery._records[s.id]  # kept
    monkeypatch.setattr(rig.host.delivery.sessions.writers, "call", real)
    rig.run(rig.host.stop())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["re-m1"]


@pytest.mark.parametrize("coming", [True, False])
def test_records_wait_long_only_while_rows_are_on_their_way(rig: Rig, coming: bool) -> None:
    """While rows of the session are on their way into its file they will carry the
    records: held ``HOLD_S``. Otherwise only ``HOLD_BRIEF_S`` (a message sent as soon as the
    reply came is routed within it): a host kill's window stays close to a commit's."""
    s = rig.one_chat_session()
    hold = rig.host.delivery.hold
    hold.hold_s, hold.brief_s = 600.0, 300.0  # (recognisable; nothing fires in the test)
    ingest = rig.host.sessions.ingest
    assert ingest is not None
    ingest.writing = lambda sid: coming  # type: ignore[method-assign]
    rig.reply(s, {"text": "r1"}, channel_type="fake", platform_id="chan", id="r1")

    async def pass_() -> float:
        await rig.host.delivery.drain(s.id, rig.host.now)
        return hold._held[s.id][1].when() - asyncio.get_running_loop().time()

    left = rig.run(pass_())
    assert (590 < left <= 600) if coming else (290 < left <= 300)
    assert rig.run(hold.flush_all())
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["r1"]


def test_ingest_says_when_rows_of_a_session_are_on_their_way(rig: Rig) -> None:
    s = rig.one_chat_session()
    ingest = rig.host.sessions.ingest
    assert ingest is not None
    assert not ingest.writing(s.id)  # (the first message is in its file)

    async def route_and_look() -> bool:
        task = asyncio.ensure_future(rig.host.route(make_event("two", platform_id="chan")))
        for _ in range(50):  # until its row is handed to the session's pump
            await asyncio.sleep(0)
            if ingest.writing(s.id):
                break
        seen = ingest.writing(s.id)
        await task
        return seen

    assert rig.run(route_and_look())
    assert not ingest.writing(s.id)


def test_an_edit_naming_another_sessions_row_id_is_not_mapped(rig: Rig) -> None:
    """The row-id mapping is per session: an agent that names a row id of another chat's
    reply (row ids are agent-chosen and may be guessed) gets that id passed on as it is,
    never the platform's id of a message in a chat it does not own."""
    ag = rig.agent()
    for chat in ("c1", "c2"):
        rig.wire(rig.chat(chat), ag)
        rig.run(rig.host.route(make_event("hi", platform_id=chat, id=f"m-{chat}")))
    a, b = sorted(rig.sessions(), key=lambda x: x.messaging_group_id or "")
    rig.reply(a, {"text": "secret"}, channel_type="fake", platform_id="c1", id="victim")
    rig.run(rig.host.deliver_once(a.id))
    rig.reply(b, {"operation": "edit", "messageId": "victim", "text": "defaced"},
              channel_type="fake", platform_id="c2", id="attack")  # fmt: skip
    rig.run(rig.host.deliver_once(b.id))
    [pm] = [d["platform_message_id"] for d in rig.delivered(a)]
    assert [e[2] for e in rig.channel.edits] == ["victim"] and pm != "victim"
