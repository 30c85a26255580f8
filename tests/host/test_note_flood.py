"""An agent can make the host write notes to it: every row it writes that cannot be
delivered is answered with one (the agent is hostile). Writing thousands of bad rows
must not make the host write thousands of notes (each a journal row and a row of the
agent's file, for ever if the agent also keeps that file locked): at most
``NOTES_PER_MINUTE`` a minute per session; the first left out is logged, the rest are
counted, and the next note after the minute says how many were not written (each row
stays recorded as failed, with its reason, in delivery's records)."""

from __future__ import annotations

import json
import logging

import pytest
from host_rig import Rig

from carapace.host.sessions import NOTES_PER_MINUTE


def _notes(rig: Rig, s: object) -> list[str]:
    rows = rig.inbound(s, "SELECT content FROM messages_in WHERE channel_type='agent' "  # type: ignore[arg-type]
                      "ORDER BY seq")  # fmt: skip
    return [json.loads(r["content"])["text"] for r in rows]


def test_a_flood_of_undeliverable_rows_gets_a_bounded_number_of_notes(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    s = rig.one_chat_session("chan")
    for i in range(NOTES_PER_MINUTE + 40):
        rig.reply(s, {"action": f"bogus-{i}"}, kind="system")
    with caplog.at_level(logging.WARNING):
        rig.run(rig.host.deliver_once(s.id))
    notes = _notes(rig, s)
    assert len(notes) == NOTES_PER_MINUTE
    assert all("bogus" in n for n in notes)
    assert any("counted, not written" in r.getMessage() for r in caplog.records)
    assert [d["status"] for d in rig.delivered(s)].count("failed") == NOTES_PER_MINUTE + 40
    rig.clock.advance(61)  # a new minute: one note says what was left out, then the next
    rig.reply(s, {"action": "bogus-late"}, kind="system")
    rig.run(rig.host.deliver_once(s.id))
    notes = _notes(rig, s)
    assert len(notes) == NOTES_PER_MINUTE + 2
    assert "40 notes to you were not written" in notes[-2]
    assert "bogus-late" in notes[-1]
