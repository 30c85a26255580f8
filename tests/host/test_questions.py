"""``ask_user_question`` round trips: the card is recorded at delivery, an answer becomes a
``question_response`` system row with trigger 0, late answers change nothing (spec §6.9)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from carapace.channels.fake import make_event
from carapace.config import Settings
from carapace.db import approvals as dba
from carapace.permissions import approvals, cards
from carapace.permissions.approvals_host import HostContext, tick

if TYPE_CHECKING:
    from host_rig import Rig  # tests/host/conftest.py

OPTS = [{"label": "Yes", "value": "yes"}, {"label": "No", "value": "no"}]


def ask(rig: Rig, qid: str = "msg-q1") -> Any:
    ag = rig.agent("main")
    mg = rig.chat("chat-1", is_group=True)  # in a DM, the person there may answer
    rig.wire(mg, ag)
    rig.user("fake:owner", role="owner")
    rig.run(rig.host.route(make_event("hi", sender_id="owner")))
    [s] = rig.sessions()
    rig.reply(s, {"type": "ask_question", "questionId": qid, "title": "Deploy?",
                  "question": "Ship it now?", "options": OPTS},
              kind="chat-sdk", channel_type="fake", platform_id="chat-1")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    return s


def test_question_answered_by_click(rig: Rig) -> None:
    s = ask(rig)
    [card] = [d.content for d in rig.channel.deliveries if d.kind == "chat-sdk"]
    assert card["replyCode"] and "Ship it now?" in card["text"]
    assert dba.get_question(rig.db, "msg-q1") is not None
    out = approvals.handle_action(HostContext(rig.host), "msg-q1", "1", "owner", "fake", "chat-1")
    assert out.status == "answered"
    rows = rig.inbound(s, "SELECT * FROM messages_in WHERE kind='system'")
    [row] = rows
    assert row["trigger"] == 0 and row["id"].startswith("qr-msg-q1-")
    assert json.loads(row["content"]) == {
        "type": "question_response",
        "questionId": "msg-q1",
        "selectedOption": "no",
        "userId": "fake:owner",
    }
    assert dba.get_question(rig.db, "msg-q1") is None
    rig.run(tick(rig.host))
    assert rig.channel.edits[-1][3] == "Deploy?\n\n✅ No"


def test_question_text_reply_and_stranger(rig: Rig) -> None:
    s = ask(rig)
    code = cards.get_card(rig.db, "msg-q1").code  # type: ignore[union-attr]
    rig.user("fake:stranger")
    rig.run(rig.host.route(make_event(f"{code} yes", sender_id="stranger")))
    assert dba.get_question(rig.db, "msg-q1") is not None
    rig.run(rig.host.route(make_event(f"{code} yes", sender_id="owner")))
    assert dba.get_question(rig.db, "msg-q1") is None
    [row] = rig.inbound(s, "SELECT * FROM messages_in WHERE kind='system'")
    assert json.loads(row["content"])["selectedOption"] == "yes"
    rig.run(tick(rig.host))
    texts = [d.content.get("text") for d in rig.channel.deliveries if d.kind == "chat"]
    assert any(cards.NOT_AUTHORISED in str(t) for t in texts)


def test_question_timed_out_then_answered_late(rig: Rig) -> None:
    s = ask(rig)
    rig.clock.advance(Settings().approval_ttl_s + 1)
    rig.run(tick(rig.host))
    assert dba.get_question(rig.db, "msg-q1") is None
    assert cards.get_card(rig.db, "msg-q1").status == "expired"  # type: ignore[union-attr]
    out = approvals.handle_action(HostContext(rig.host), "msg-q1", "0", "owner", "fake", "chat-1")
    assert out.status == "gone"
    assert rig.inbound(s, "SELECT * FROM messages_in WHERE kind='system'") == []


def test_late_answer_before_expiry_never_pins_a_runner(rig: Rig) -> None:
    s = ask(rig)
    approvals.decide(HostContext(rig.host), "msg-q1", True, "fake:owner")
    [row] = rig.inbound(s, "SELECT * FROM messages_in WHERE kind='system'")
    assert row["trigger"] == 0 and json.loads(row["content"])["selectedOption"] == "yes"
