"""A runner (or the agent's code beside it) holding ``outbound.db``'s write lock must not
stall the host's event loop (issue 12, item 7): the few reads still made on the loop — the
highest outbound seq when a message is routed in, the task hook's ack lookups — never wait
for that lock; the host carries on and reads the file again later."""

from __future__ import annotations

import sqlite3

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.host.outbox_reader import OutboxRefused, read_acks, read_max_seq
from carapace.testing.loop_ticks import LongestGap


def test_a_held_write_lock_never_stalls_the_loop(rig: Rig) -> None:
    ag = rig.agent()
    mg = rig.chat()
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("hi", id="m1")))
    [s] = rig.sessions()
    rig.reply(s, {"text": "answer"}, in_reply_to="m1")
    out = rig.paths(s).outbound
    hostile = sqlite3.connect(str(out), isolation_level=None)
    hostile.execute("BEGIN EXCLUSIVE")  # what a hostile bash can hold for a whole tool call

    async def passes() -> float:
        """Route a message in and sweep, measuring the longest loop stall."""
        async with LongestGap() as gap:
            await rig.host.route(make_event("second", id="m2"))  # the insert peeks max seq
            rig.clock.advance(1)
            await rig.host.sweep_once()  # the task hook's ack lookups; delivery off the loop
        return gap.longest

    try:
        assert read_max_seq(out) == 0  # refused at once, not waited for
        with pytest.raises(OutboxRefused, match="locked"):
            read_acks(out, ["m1"], budget_s=0.25)
        stall = rig.run(passes())
    finally:
        hostile.execute("ROLLBACK")
        hostile.close()
    assert stall < 0.5, f"the event loop stalled {stall:.2f} s on the runner's lock"
    # the lock gone, the file reads normally again and both messages are there
    assert read_max_seq(out) >= 1
    ids = [r["id"] for sess in rig.sessions() for r in rig.inbound(sess)]
    assert any(i.startswith("m1") for i in ids) and any(i.startswith("m2") for i in ids)


def test_a_lock_held_past_the_read_wait_is_told_as_a_lock_and_the_reply_goes_after(
    rig: Rig,
) -> None:
    """A lock that outlasts the read's wait is not a bad file: the note to the agent says
    it stayed locked (not that its schema is wrong), and the reply goes once it is gone."""
    s = rig.one_chat_session("chan")
    rig.reply(s, {"text": "answer"}, channel_type="fake", platform_id="chan")
    hostile = sqlite3.connect(str(rig.paths(s).outbound), isolation_level=None)
    hostile.execute("BEGIN EXCLUSIVE")
    try:
        assert rig.run(rig.host.deliver_once(s.id)) == 0
    finally:
        hostile.execute("ROLLBACK")
        hostile.close()
    rig.stored()
    notes = [r["content"] for r in rig.inbound(s) if "outbound.db" in r["content"]]
    assert len(notes) == 1
    assert "stayed locked" in notes[0] and "schema" not in notes[0]
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.texts() == ["answer"]
