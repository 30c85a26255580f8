"""A reply no host has read before needs no look into inbound.db for delivery records
(issue 19: one thread hop less per round trip); a row an earlier host process may have read
always gets that look, so nothing it delivered is sent again."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from host_rig import Rig

from carapace.channels.base import OutboundMessage
from carapace.host import delivery, outbox_reader


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ids of every look into inbound.db for delivery records (``known_of``)."""
    seen: list[list[str]] = []
    real = delivery.known_of

    def counting(inb: sqlite3.Connection, ids: list[str]) -> Any:
        found = real(inb, ids)  # (a try that met a commit's lock is set aside and run
        seen.append(list(ids))  # again: only a look that ended counts)
        return found

    monkeypatch.setattr(delivery, "known_of", counting)
    return seen


def _sent(rig: Rig) -> list[str]:
    return rig.channel.texts()


def test_a_reply_no_host_read_before_is_sent_without_a_look(
    rig: Rig, looks: list[list[str]]
) -> None:
    s = rig.one_chat_session()
    rig.reply(s, {"text": "one"}, channel_type="fake", platform_id="chan", id="r1")
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert looks == [["r1"]]  # this host's first look at the file: it may have been read
    for i, rid in enumerate(("r2", "r3"), start=2):
        rig.reply(s, {"text": f"reply {i}"}, channel_type="fake", platform_id="chan", id=rid)
        assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert looks == [["r1"]]
    assert _sent(rig) == ["one", "reply 2", "reply 3"]
    assert rig.run(rig.host.deliver_once(s.id)) == 0
    assert {d["message_out_id"] for d in rig.delivered(s)} == {"r1", "r2", "r3"}


def test_rows_an_earlier_host_may_have_read_are_looked_up_past_this_hosts_first_batch(
    rig: Rig, looks: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier host process read r1..r4 and delivered r4 (say r1 waited for a retry),
    then died: the cursor stayed before r1. This host reads two rows a pass: r3 and r4
    come in its second pass, above everything it has read itself, and must still be
    looked up (the mark is the file's highest seq at the first look, not the first batch)."""
    monkeypatch.setattr(outbox_reader, "MAX_ROWS", 2)
    monkeypatch.setattr(delivery, "MAX_ROWS", 2)
    s = rig.one_chat_session()
    for rid in ("r1", "r2", "r3", "r4"):
        rig.reply(s, {"text": rid}, channel_type="fake", platform_id="chan", id=rid)
    conn = sqlite3.connect(rig.paths(s).inbound)
    try:
        with conn:
            delivery.host_tables(conn)
            conn.execute(
                "INSERT INTO delivered (message_out_id, platform_message_id, status, "
                "delivered_at) VALUES ('r4', 'p4', 'delivered', '2026-12-06 00:00:00')"
            )
    finally:
        conn.close()
    rig.run(rig.host.deliver_once(s.id))
    assert _sent(rig) == ["r1", "r2", "r3"]  # r4 was delivered by the earlier host
    assert looks == [["r1", "r2"], ["r3", "r4"]]
    rig.reply(s, {"text": "r5"}, channel_type="fake", platform_id="chan", id="r5")
    rig.run(rig.host.deliver_once(s.id))
    assert _sent(rig) == ["r1", "r2", "r3", "r5"]
    assert looks == [["r1", "r2"], ["r3", "r4"]]  # r5: written after this host's first look


def test_a_row_read_before_is_looked_up_again_beside_a_new_one(
    rig: Rig, looks: list[list[str]]
) -> None:
    """A reply whose send failed waits out its back-off (committed in inbound.db); the next
    new reply comes in the same batch, which is looked up: the waiting one keeps its
    back-off and the new one its place behind it."""
    s = rig.one_chat_session()
    rig.reply(s, {"text": "first"}, channel_type="fake", platform_id="chan", id="r1")
    rig.run(rig.host.deliver_once(s.id))
    rig.channel.fail_next = 1
    rig.reply(s, {"text": "waits"}, channel_type="fake", platform_id="chan", id="r2")
    rig.run(rig.host.deliver_once(s.id))  # fails: an attempt with a back-off, committed
    assert [d["message_out_id"] for d in rig.inbound(s, "SELECT * FROM carapace_delivery")] == [
        "r2"
    ]
    rig.reply(s, {"text": "third"}, channel_type="fake", platform_id="chan", id="r3")
    n = len(looks)
    rig.run(rig.host.deliver_once(s.id))
    assert looks[n:] == [["r2", "r3"]]
    assert _sent(rig) == ["first"]  # r2 waits for its next attempt, r3 behind it
    rig.clock.advance(60)
    rig.run(rig.host.deliver_once(s.id))
    assert _sent(rig) == ["first", "waits", "third"]


def test_an_agent_that_rewrites_a_delivered_row_higher_gets_only_what_a_new_row_gets(
    rig: Rig, looks: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile case: the agent moves a reply the host delivered above everything the
    host has read (same id, a higher seq: what a fresh row is). The host skips the look, so it goes
    again, as any new row the agent writes would; but with the same idempotency key (an
    adapter that dedupes drops it), one ``delivered`` record, the cursor past it, and the
    next fresh reply delivered as usual."""
    sent: list[OutboundMessage] = []
    real = rig.channel.deliver

    async def keeping(pid: str, tid: str | None, msg: OutboundMessage) -> str | None:
        sent.append(msg)
        return await real(pid, tid, msg)

    monkeypatch.setattr(rig.channel, "deliver", keeping)
    s = rig.one_chat_session()
    rig.reply(s, {"text": "once"}, channel_type="fake", platform_id="chan", id="r1")
    rig.run(rig.host.deliver_once(s.id))
    out = sqlite3.connect(rig.paths(s).outbound)
    try:
        with out:  # the delivered row moved above everything the host has read
            out.execute("UPDATE messages_out SET seq = seq + 100 WHERE id = 'r1'")
    finally:
        out.close()
    rig.run(rig.host.deliver_once(s.id))
    assert [m.message_out_id for m in sent] == ["r1", "r1"]
    assert sent[0].key == sent[1].key
    assert [d["message_out_id"] for d in rig.delivered(s)] == ["r1"]
    top = rig.run(rig.host.delivery.outbox.call(outbox_reader.read_max_seq, rig.paths(s).outbound))
    cursor = rig.inbound(s, "SELECT seq FROM carapace_delivery_cursor")[0]["seq"]
    assert cursor == top
    rig.reply(s, {"text": "next"}, channel_type="fake", platform_id="chan", id="r2")
    rig.run(rig.host.deliver_once(s.id))
    assert _sent(rig) == ["once", "once", "next"]
