"""Delivery: ACL, operations, files, retries, no-reader, system actions, a2a (spec §4)."""

from __future__ import annotations

import os

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.db.destinations import add_destination
from carapace.db.sessions import Session


def _session(rig: Rig, platform: str = "chan") -> tuple[str, str, Session]:
    ag = rig.agent()
    mg = rig.chat(platform)
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("hi", platform_id=platform, id="m1")))
    [s] = rig.sessions()
    return ag, mg, s


def test_reply_delivered_once_in_seq_order(rig: Rig) -> None:
    _, _, s = _session(rig)
    a = rig.reply(s, {"text": "one"}, channel_type="fake", platform_id="chan", id="b")
    b = rig.reply(s, {"text": "two"}, channel_type="fake", platform_id="chan", id="a")
    assert rig.run(rig.host.deliver_once(s.id)) == 2
    assert rig.channel.texts() == ["one", "two"]
    assert rig.run(rig.host.deliver_once(s.id)) == 0
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)} == {
        a: "delivered",
        b: "delivered",
    }
    top = max(r["seq"] for r in rig.inbound(s, "SELECT seq FROM messages_in"))
    assert rig.inbound(s, "SELECT seq FROM carapace_delivery_cursor")[0]["seq"] >= top - 1


def test_acl(rig: Rig) -> None:
    ag, _, s = _session(rig)
    other = rig.chat("other")
    r1 = rig.reply(s, {"text": "x"}, channel_type="fake", platform_id="other")
    r2 = rig.reply(s, {"text": "y"}, channel_type="fake", platform_id="nowhere")
    rig.run(rig.host.deliver_once(s.id))
    st = {d["message_out_id"]: d["status"] for d in rig.delivered(s)}
    assert st == {r1: "failed", r2: "failed"} and rig.channel.deliveries == []
    # the failure is told to the agent
    notes = rig.inbound(s, "SELECT * FROM messages_in WHERE channel_type='agent'")
    assert len(notes) == 2 and '"sender":"system"' in notes[0]["content"]
    add_destination(rig.db, ag, "x", "channel", other)
    r3 = rig.reply(s, {"text": "z"}, channel_type="fake", platform_id="other")
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)}[r3] == "delivered"


def test_a_destination_removed_by_another_process_is_refused_at_the_next_pass(
    rig: Rig,
) -> None:
    """A pass's central reads (the session, a chat's refusal) come from the memo checked at
    the pass's start (issue 19): a destination taken away by the CLI or the web UI, another
    process, holds from the next pass on, as a fresh read would."""
    from carapace.db.connection import connect
    from carapace.db.destinations import remove_destination

    ag, _, s = _session(rig)
    other = rig.chat("other")
    add_destination(rig.db, ag, "x", "channel", other)
    r1 = rig.reply(s, {"text": "one"}, channel_type="fake", platform_id="other")
    rig.run(rig.host.deliver_once(s.id))  # read and kept in the memo: allowed
    conn = connect(rig.host.home.central_db)
    try:
        remove_destination(conn, ag, "x")
    finally:
        conn.close()
    r2 = rig.reply(s, {"text": "two"}, channel_type="fake", platform_id="other")
    rig.run(rig.host.deliver_once(s.id))
    st = {d["message_out_id"]: d["status"] for d in rig.delivered(s)}
    assert st == {r1: "delivered", r2: "failed"}


def test_retry_then_failed_and_flaky(rig: Rig) -> None:
    _, _, s = _session(rig)
    rig.channel.fail_always = True
    r = rig.reply(s, {"text": "x"}, channel_type="fake", platform_id="chan")
    for _ in range(3):
        rig.run(rig.host.deliver_once(s.id))
        rig.clock.advance(10)
    assert rig.channel.calls == 3
    assert rig.delivered(s)[0]["status"] == "failed"
    rig.run(rig.host.deliver_once(s.id))
    assert rig.channel.calls == 3
    rig.channel.fail_always = False
    rig.channel.fail_next = 1
    r2 = rig.reply(s, {"text": "y"}, channel_type="fake", platform_id="chan")
    rig.run(rig.host.deliver_once(s.id))
    rig.run(rig.host.deliver_once(s.id))  # backoff not over: no call
    assert rig.channel.calls == 4
    rig.clock.advance(5)
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)} == {
        r: "failed",
        r2: "delivered",
    }
    assert rig.inbound(
        s, "SELECT attempts FROM carapace_delivery WHERE message_out_id=?".replace("?", f"'{r2}'")
    ) == [{"attempts": 1}]


def test_no_reader_never_marked_delivered(rig: Rig) -> None:
    _, _, s = _session(rig)
    rig.channel.unavailable = True
    rig.reply(s, {"text": "x"}, channel_type="fake", platform_id="chan")
    for _ in range(5):
        rig.run(rig.host.deliver_once(s.id))
        rig.clock.advance(60)
    assert rig.delivered(s) == []
    rig.channel.unavailable = False
    rig.run(rig.host.deliver_once(s.id))
    assert [d["status"] for d in rig.delivered(s)] == ["delivered"]


def test_a_row_waiting_for_a_reader_goes_at_the_next_pass(rig: Rig) -> None:
    """A row with no reader waits without counting an attempt, and is tried at every pass,
    not only after ``UNAVAILABLE_RETRY_S``: a reader that is back gets it at once."""
    _, _, s = _session(rig)
    rig.channel.unavailable = True
    r = rig.reply(s, {"text": "x"}, channel_type="fake", platform_id="chan")
    rig.run(rig.host.deliver_once(s.id))
    assert rig.delivered(s) == [] and rig.channel.calls == 1
    [state] = rig.inbound(s, "SELECT attempts, last_error FROM carapace_delivery")
    assert state["attempts"] == 0 and state["last_error"].startswith("no reader: ")
    rig.channel.unavailable = False
    rig.clock.advance(1)  # far less than UNAVAILABLE_RETRY_S
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)} == {r: "delivered"}
    assert rig.channel.texts() == ["x"]


def test_a_row_with_no_reader_for_a_day_fails_and_the_agent_hears_it(rig: Rig) -> None:
    _, _, s = _session(rig)
    rig.channel.unavailable = True
    r = rig.reply(s, {"text": "x"}, channel_type="fake", platform_id="chan")
    rig.run(rig.host.deliver_once(s.id))
    rig.clock.advance(24 * 3600 - 60)
    rig.run(rig.host.deliver_once(s.id))
    assert rig.delivered(s) == []  # not yet a day
    rig.clock.advance(120)
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)} == {r: "failed"}
    notes = rig.inbound(s, "SELECT content FROM messages_in WHERE channel_type='agent'")
    assert len(notes) == 1 and "no reader for 86400 s" in notes[0]["content"]


def test_operations_and_files(rig: Rig) -> None:
    _, _, s = _session(rig)
    rig.reply(
        s,
        {"operation": "edit", "messageId": "pm-1", "text": "new"},
        channel_type="fake",
        platform_id="chan",
    )
    rig.reply(
        s,
        {"operation": "reaction", "messageId": "pm-1", "emoji": "👍"},
        channel_type="fake",
        platform_id="chan",
    )
    rig.reply(s, {"type": "card", "card": {"title": "T"}}, channel_type="fake", platform_id="chan")
    rig.reply(s, {"type": "ask_question", "questionId": "q1", "title": "Q", "options": ["Yes", "No"]},
              channel_type="fake", platform_id="chan")  # fmt: skip
    out = rig.paths(s).outbox
    (out / "f1").mkdir(parents=True)
    (out / "f1" / "result.txt").write_bytes(b"ok")
    os.symlink("/etc/passwd", out / "f1" / "link")
    rig.reply(s, {"text": "files", "files": ["result.txt", "../../secret", "link"]},
              channel_type="fake", platform_id="chan", id="f1")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    assert rig.channel.edits == [("chan", None, "pm-1", "new")]
    assert rig.channel.reactions == [("chan", None, "pm-1", "👍")]
    kinds = [d.content.get("type") for d in rig.channel.deliveries]
    assert kinds == ["card", "ask_question", None]
    assert rig.channel.deliveries[-1].files == [("result.txt", b"ok")]
    assert not (out / "f1").exists()  # sent: its folder of files is cleared
    q = rig.db.execute("SELECT * FROM pending_questions").fetchall()
    assert len(q) == 1 and q[0]["session_id"] == s.id


def test_system_task_actions(rig: Rig) -> None:
    _, _, s = _session(rig)
    sched = {"action": "schedule_task", "taskId": "task-1", "prompt": "digest", "script": None,
             "processAfter": "2026-03-01T13:00:00.000Z", "recurrence": "0 9 * * *",
             "platformId": "chan", "channelType": "fake", "threadId": None}  # fmt: skip
    rig.reply(s, sched, kind="system")
    rig.run(rig.host.deliver_once(s.id))
    assert rig.channel.deliveries == []
    task = rig.inbound(s, "SELECT * FROM messages_in WHERE id='task-1'")[0]
    assert task["kind"] == "task" and task["seq"] % 2 == 0 and task["series_id"] == "task-1"
    for action, status in (
        ("pause_task", "paused"),
        ("resume_task", "pending"),
        ("cancel_task", "completed"),
    ):
        rig.reply(s, {"action": action, "taskId": "task-1"}, kind="system")
        rig.run(rig.host.deliver_once(s.id))
        assert rig.inbound(s, "SELECT status FROM messages_in WHERE id='task-1'") == [
            {"status": status}
        ]
    rig.reply(s, {"action": "update_task", "taskId": "nope", "prompt": "v2"}, kind="system")
    rig.reply(s, {"action": "bogus"}, kind="system")
    rig.run(rig.host.deliver_once(s.id))
    texts = [
        r["content"]
        for r in rig.inbound(s, "SELECT content FROM messages_in WHERE channel_type='agent'")
    ]
    assert any('update_task: no live task matched id \\"nope\\".' in t for t in texts)
    assert [d["status"] for d in rig.delivered(s)][-1] == "failed"


def test_agent_to_agent_with_return_path(rig: Rig) -> None:
    a, _, s1 = _session(rig)
    b = rig.agent("b")
    add_destination(rig.db, a, "b", "agent", b)
    add_destination(rig.db, b, "a", "agent", a)
    rig.reply(s1, {"text": "ping"}, channel_type="agent", platform_id=b, id="o1")
    rig.run(rig.host.deliver_once(s1.id))
    sb = next(s for s in rig.sessions() if s.agent_group_id == b)
    assert sb.messaging_group_id is None
    [row] = rig.inbound(sb)
    assert (
        row["id"].startswith("a2a-")
        and row["platform_id"] == a
        and row["source_session_id"] == s1.id
    )
    rig.reply(sb, {"text": "pong"}, channel_type="agent", platform_id=a, in_reply_to=row["id"])
    rig.run(rig.host.deliver_once(sb.id))
    back = rig.inbound(s1, "SELECT * FROM messages_in WHERE channel_type='agent'")
    assert len(back) == 1 and back[0]["platform_id"] == b
    # no ACL row: refused
    c = rig.agent("c")
    rig.reply(s1, {"text": "x"}, channel_type="agent", platform_id=c)
    rig.run(rig.host.deliver_once(s1.id))
    assert rig.delivered(s1)[-1]["status"] == "failed"


def test_a_reply_that_names_no_files_opens_no_outbox_folder(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: clearing ``outbox/<row id>/`` is two link-free opens and a removal; a row
    that named no files has no folder of files to clear, so a plain reply costs none of
    it. A row that names files has its folder cleared once sent (above)."""
    import carapace.host.dispatch as dispatch

    _, _, s = _session(rig)
    cleared: list[object] = []
    real = dispatch.clear_outbox
    monkeypatch.setattr(
        dispatch, "clear_outbox", lambda p, rid: (cleared.append(rid), real(p, rid))
    )
    rig.reply(s, {"text": "plain"}, channel_type="fake", platform_id="chan", id="p1")
    (rig.paths(s).outbox / "f2").mkdir(parents=True)
    (rig.paths(s).outbox / "f2" / "a.txt").write_bytes(b"a")
    rig.reply(s, {"text": "one", "files": ["a.txt"]}, channel_type="fake", platform_id="chan",
              id="f2")  # fmt: skip
    assert rig.run(rig.host.deliver_once(s.id)) == 2
    assert cleared == ["f2"] and not (rig.paths(s).outbox / "f2").exists()
