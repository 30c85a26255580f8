"""Issue 19: a runner's acks are copied into ``messages_in`` in the commit of the next
reply's delivery records, not in a commit of their own (that one came every 64 replies,
and a round trip waited behind it)."""

from __future__ import annotations

import shutil
import sqlite3
from typing import Any

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.db.sessions import Session
from carapace.host import delivery_log, host_runners


def _status(rig: Rig, s: Session) -> dict[str, str]:
    return {r["id"]: r["status"] for r in rig.inbound(s, "SELECT id, status FROM messages_in")}


def _turn(rig: Rig, s: Session | None, text: str, mid: str,
          reply_id: str | None = None) -> tuple[Session, str]:  # fmt: skip
    """A message routed, and what a runner writes for it: a reply and a completed ack."""
    rig.run(rig.host.route(make_event(text, platform_id="chan", id=mid)))
    s = s or rig.sessions()[0]
    [row] = [r for r in rig.inbound(s) if r["id"].startswith(mid)]
    rig.reply(s, {"text": f"re {text}"}, channel_type="fake", platform_id="chan",
              in_reply_to=row["id"], id=reply_id)  # fmt: skip
    rig.ack(s, row["id"], "completed")
    return s, row["id"]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No flush timer fires in the test; each commit of acks of their own is counted."""
    monkeypatch.setattr(host_runners, "ACK_FLUSH_S", 3600.0)
    calls: list[int] = []
    flush = host_runners.flush_acks

    async def counting(host: Any, session_id: str) -> None:
        calls.append(1)
        await flush(host, session_id)

    monkeypatch.setattr(host_runners, "flush_acks", counting)
    return calls


def records_writes_fail(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Writes of delivery records fail (a disk I/O error) while the flag returned is set."""
    real = delivery_log.Records.write
    failing = [True]

    def write(self: Any, conn: sqlite3.Connection) -> None:
        if failing[0]:
            raise sqlite3.OperationalError("disk I/O error")
        real(self, conn)

    monkeypatch.setattr(delivery_log.Records, "write", write)
    return failing


def _wire(rig: Rig) -> None:
    ag = rig.agent()
    rig.wire(rig.chat("chan"), ag)


def test_noted_acks_ride_along_with_the_delivery_records(rig: Rig, counted: list[int]) -> None:
    _wire(rig)
    s, m1 = _turn(rig, None, "one", "m1")
    assert rig.host.pool.is_running(s.id)  # (a live runner: acks are batched)
    rig.run(host_runners.note_new_acks(rig.host, s.id))
    assert rig.host._acks_due[s.id] == {m1: "completed"}
    assert _status(rig, s)[m1] == "pending"
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.texts() == ["re one"]
    assert _status(rig, s)[m1] == "completed"  # in the commit of the reply's delivery
    assert {d["status"] for d in rig.delivered(s)} == {"delivered"}
    assert not rig.host._acks_due.get(s.id) and s.id not in rig.host._ack_timers
    assert counted == []  # no commit of acks alone


def test_a_reply_and_its_ack_take_one_commit(rig: Rig, counted: list[int]) -> None:
    """A runner's commit (reply + ack): the host reads the ack beside the delivery (its
    read is done long before the reply is sent), so the ack is copied with the reply's
    delivery records; both are held until the chat's next message, whose commit carries
    them (host/delivery_hold.py), or their flush."""
    _wire(rig)
    s, m1 = _turn(rig, None, "one", "m1")
    rig.run(host_runners.after_commit(rig.host, s.id))
    assert rig.host.delivery.hold.held(s.id)
    assert _status(rig, s)[m1] == "pending" and rig.delivered(s) == []
    _, m2 = _turn(rig, s, "two", "m2")  # its row's commit carries them
    assert _status(rig, s)[m1] == "completed"
    assert {d["status"] for d in rig.delivered(s)} == {"delivered"}
    rig.run(host_runners.after_commit(rig.host, s.id))
    rig.run(rig.host.delivery.hold.flush_all())
    assert rig.channel.texts() == ["re one", "re two"]
    assert _status(rig, s)[m2] == "completed"
    assert not rig.host._acks_due.get(s.id) and s.id not in rig.host._ack_timers
    assert counted == []


def test_acks_whose_commit_failed_are_noted_again_and_copied_later(
    rig: Rig, counted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _wire(rig)
    s, m1 = _turn(rig, None, "one", "m1")
    rig.run(host_runners.note_new_acks(rig.host, s.id))
    failing = records_writes_fail(monkeypatch)
    rig.run(rig.host.deliver_once(s.id))  # the reply is sent, its records not written
    assert rig.channel.texts() == ["re one"]
    assert _status(rig, s)[m1] == "pending"
    assert rig.host._acks_due[s.id] == {m1: "completed"}  # noted again
    assert s.id in rig.host._ack_timers  # and their timer armed
    failing[0] = False
    rig.run(rig.host.deliver_once(s.id))  # the records are written again: the acks with them
    assert _status(rig, s)[m1] == "completed"
    assert rig.channel.texts() == ["re one"]  # (sent once)
    assert counted == []


def test_the_acks_are_read_in_the_deliverys_own_read(rig: Rig, counted: list[int]) -> None:
    """after_commit's read of the runner's new acks runs in delivery's read of outbound.db
    (one transaction, one thread hop: a second reader beside it held the reply back
    ~0.5 ms), not in a read of its own."""
    _wire(rig)
    s, m1 = _turn(rig, None, "one", "m1")
    calls: list[str] = []
    real_call = rig.host.delivery.outbox.call

    async def call(fn: Any, *args: Any) -> Any:
        calls.append(getattr(fn, "func", fn).__name__)
        return await real_call(fn, *args)

    rig.host.delivery.outbox.call = call  # type: ignore[method-assign]
    rig.run(host_runners.after_commit(rig.host, s.id))
    rig.run(rig.host.delivery.hold.flush_all())
    assert calls == ["read_pass"]
    assert rig.channel.texts() == ["re one"]
    assert _status(rig, s)[m1] == "completed"  # the ack went with the reply's records
    assert counted == []


def test_a_failing_read_of_acks_never_keeps_the_reply_or_its_records(
    rig: Rig, counted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acks' read fails inside delivery's read: the reply is sent and its records are
    committed all the same; the acks are then read on their own, and a failure there
    (slow, after the send) is after_commit's to report."""
    import time

    _wire(rig)
    s, _m1 = _turn(rig, None, "one", "m1")

    def failing_on(*_args: Any, **_kw: Any) -> Any:
        raise sqlite3.OperationalError("interrupted")

    def broken(*_args: Any) -> Any:
        deadline = time.monotonic() + 10
        while not rig.channel.deliveries and time.monotonic() < deadline:
            time.sleep(0.001)  # (a reader thread) until the reply is sent,
        time.sleep(0.05)  # and a moment more
        raise RuntimeError("a reader gone wrong")

    monkeypatch.setattr(host_runners, "new_acks_on", failing_on)
    monkeypatch.setattr(host_runners, "new_acks", broken)
    with pytest.raises(RuntimeError, match="gone wrong"):
        rig.run(host_runners.after_commit(rig.host, s.id))
    assert rig.channel.texts() == ["re one"]
    assert rig.run(rig.host.delivery.hold.flush_all())  # (held a moment: delivery_hold.py)
    assert {d["status"] for d in rig.delivered(s)} == {"delivered"}  # committed
    assert not rig.host.delivery.take_along(s.id)  # nothing left pending


def test_a_drain_under_way_leaves_the_acks_to_a_read_of_their_own(
    rig: Rig, counted: list[int]
) -> None:
    """A commit while the session's drain runs: that drain takes the new pass over and
    after_commit returns at once; the acks are read on their own, not lost."""
    _wire(rig)
    s, m1 = _turn(rig, None, "one", "m1")
    rig.host.delivery._inflight.add(s.id)  # a drain under way (it will read again)
    try:
        rig.run(host_runners.after_commit(rig.host, s.id))
    finally:
        rig.host.delivery._inflight.discard(s.id)
    assert rig.channel.texts() == []  # (the drain under way sends)
    assert rig.host._acks_due[s.id] == {m1: "completed"}  # noted by a read of their own
    assert not rig.host.delivery.take_along(s.id)


def test_a_folder_made_again_has_its_acks_read_from_its_start(rig: Rig, counted: list[int]) -> None:
    """The host reads a session's acks past the highest rowid it has read. A folder deleted
    and made again has a new ``outbound.db`` whose rowids start again at 1: the old mark
    kept its acks unread (``messages_in`` pending) until the sweep's full ack sync."""
    _wire(rig)
    s: Session | None = None
    for i in range(6):
        s, _ = _turn(rig, s, f"n{i}", f"m{i}")
        rig.run(host_runners.after_commit(rig.host, s.id))
    assert s is not None
    rig.run(rig.host.pool.stop(s.id, "test"))  # its runner ends; the last drain reads on
    rig.settle()
    assert rig.host._ack_rowid.get(s.id, 0) >= 6
    shutil.rmtree(rig.paths(s).root)  # the folder deleted (by hand, by a backup restore)
    _, again = _turn(rig, s, "again", "m9")  # made again by the router; a new runner
    rig.run(host_runners.after_commit(rig.host, s.id))
    rig.run(rig.host.delivery.hold.flush_all())
    assert rig.channel.texts()[-1] == "re again"
    assert _status(rig, s)[again] == "completed"
