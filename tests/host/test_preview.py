"""Streamed replies, the host's side (host/preview.py): one preview message posted once a
turn has been writing for a second, edited at most once a second, the final reply edited
into it; the preview file is agent-written, so hostile files change nothing."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.db.sessions import Session
from carapace.errors import ConfigError
from carapace.host import preview as pv
from carapace.host.preview import PreviewKeeper, split_for_edit

RID = "msg-tabc-reply"


@pytest.fixture
def t(rig: Rig) -> list[float]:
    rig.channel.streams_replies = True
    now = [1000.0]
    rig.host.previews.monotonic = lambda: now[0]
    return now


def _write(rig: Rig, s: Session, text: str, *, done: bool = False, reply: bool = False,
           rid: str = RID, platform: str = "chan", raw: bytes | None = None) -> None:  # fmt: skip
    path = rig.paths(s).outbox / ".preview.json"
    data = raw if raw is not None else json.dumps({
        "v": 1, "reply_id": rid, "channel_type": "fake", "platform_id": platform,
        "thread_id": None, "text": text, "done": done, "reply": reply}).encode()  # fmt: skip
    tmp = path.with_name("x.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _poll(rig: Rig, s: Session) -> None:
    rig.run(rig.host.previews.poll(s.id))


def test_one_preview_edited_then_the_reply_edited_in(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _write(rig, s, "Once upon")
    _poll(rig, s)
    assert rig.channel.deliveries == []  # a quick reply never shows a preview
    t[0] += 1.1
    _write(rig, s, "Once upon a time")
    _poll(rig, s)
    assert rig.channel.texts() == ["Once upon a time"]
    pm = "fake-pm-1"
    t[0] += 0.5
    _write(rig, s, "Once upon a time there")
    _poll(rig, s)
    assert rig.channel.edits == []  # at most one edit a second
    t[0] += 0.6
    _poll(rig, s)
    assert rig.channel.edits == [("chan", None, pm, "Once upon a time there")]
    _poll(rig, s)  # nothing new: no edit
    assert len(rig.channel.edits) == 1
    # the runner commits the reply with the preview's id; delivery edits it in
    rig.reply(s, {"text": "Once upon a time there was a fox."}, channel_type="fake",
              platform_id="chan", id=RID, in_reply_to="m1")  # fmt: skip
    _write(rig, s, "Once upon a time there was a fox.", done=True, reply=True)
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.edits[-1] == ("chan", None, pm, "Once upon a time there was a fox.")
    assert len(rig.channel.deliveries) == 1  # one message: the preview became the reply
    [d] = rig.delivered(s)
    assert (d["message_out_id"], d["status"], d["platform_message_id"]) == (RID, "delivered", pm)
    t[0] += 5
    _poll(rig, s)  # the finished preview is never shown again
    assert len(rig.channel.deliveries) == 1 and len(rig.channel.edits) == 2


def test_a_reply_delivered_before_the_preview_was_seen_is_never_previewed(
    rig: Rig, t: list[float]
) -> None:
    s = rig.one_chat_session()
    rig.reply(s, {"text": "quick"}, channel_type="fake", platform_id="chan", id=RID)
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    _write(rig, s, "quick")  # the runner's last write, read late
    for _ in range(3):
        t[0] += 1.1
        _poll(rig, s)
    assert rig.channel.texts() == ["quick"] and rig.channel.edits == []


def _shown(rig: Rig, t: list[float], s: Session, text: str = "Working") -> str:
    _write(rig, s, text)
    _poll(rig, s)
    t[0] += 1.1
    _poll(rig, s)
    assert rig.channel.texts() == [text]
    return "fake-pm-1"


def _fresh_keeper(rig: Rig, t: list[float]) -> PreviewKeeper:
    """The keeper a restarted host has: nothing in memory."""
    host = rig.host
    keeper = PreviewKeeper(host.db, host.sessions, host.adapters, host.settings.extra,
                           is_running=lambda s: True, heartbeat_age=lambda s: 0.0,
                           monotonic=lambda: t[0], open_inbound=host.delivery._open,
                           now=host.now)  # fmt: skip
    host.previews = host.delivery.previews = keeper
    return keeper


def test_after_a_host_restart_the_same_preview_goes_on(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    pm = _shown(rig, t, s, "Once upon")
    [rec] = rig.inbound(s, "SELECT * FROM carapace_preview")
    assert (rec["reply_id"], rec["platform_message_id"]) == (RID, pm)
    _fresh_keeper(rig, t)
    _write(rig, s, "Once upon a time")
    _poll(rig, s)  # no second preview: the recorded one is edited
    assert rig.channel.texts() == ["Once upon"]
    assert rig.channel.edits == [("chan", None, pm, "Once upon a time")]
    _fresh_keeper(rig, t)  # and again, before the reply is delivered
    rig.reply(s, {"text": "Once upon a time."}, channel_type="fake", platform_id="chan", id=RID)
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.texts() == ["Once upon"]
    assert rig.channel.edits[-1] == ("chan", None, pm, "Once upon a time.")


def test_a_recorded_preview_of_another_chat_is_not_edited(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _shown(rig, t, s)
    _fresh_keeper(rig, t)
    other = rig.chat("other")
    from carapace.db.destinations import add_destination

    add_destination(rig.db, s.agent_group_id, "other", "channel", other, now=rig.clock.now())
    rig.reply(s, {"text": "elsewhere"}, channel_type="fake", platform_id="other", id=RID)
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.texts() == ["Working", "elsewhere"] and rig.channel.edits == []


def test_a_long_reply_fills_the_preview_and_the_rest_follows(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    rig.channel.edit_chars = 40
    pm = _shown(rig, t, s)
    words = [f"word{i}" for i in range(30)]
    rig.reply(s, {"text": " ".join(words)}, channel_type="fake", platform_id="chan", id=RID)
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    head = rig.channel.edits[-1]
    assert head[2] == pm and len(head[3]) <= 40
    rest = rig.channel.texts()[1:]
    assert len(rest) == 1
    assert (head[3] + " " + rest[0]).split() == words  # every word once


def test_a_failed_edit_posts_the_reply(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _shown(rig, t, s)
    rig.reply(s, {"text": "the answer"}, channel_type="fake", platform_id="chan", id=RID)
    rig.channel.fail_next = 1  # the edit fails; the post goes through
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.texts() == ["Working", "the answer"]
    assert rig.channel.edits == []


def test_a_reply_with_files_is_posted_not_edited(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _shown(rig, t, s)
    folder = rig.paths(s).outbox / RID
    folder.mkdir()
    (folder / "a.txt").write_text("data")
    rig.reply(s, {"text": "see file", "files": ["a.txt"]}, channel_type="fake",
              platform_id="chan", id=RID)  # fmt: skip
    assert rig.run(rig.host.deliver_once(s.id)) == 1
    assert rig.channel.texts() == ["Working", "see file"] and rig.channel.edits == []


def test_a_turn_without_a_reply_leaves_its_last_text(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    pm = _shown(rig, t, s, "Let me check")
    _write(rig, s, "Let me check the calendar.", done=True, reply=False)
    _poll(rig, s)
    assert rig.channel.edits == [("chan", None, pm, "Let me check the calendar.")]
    assert s.id not in rig.host.previews.shown


def test_a_finished_turn_is_never_posted(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _write(rig, s, "All done.", done=True, reply=True)
    for _ in range(3):
        t[0] += 1.1
        _poll(rig, s)
    assert rig.channel.deliveries == []


def test_a_preview_that_never_ends_stops_being_edited(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _shown(rig, t, s, "tick")
    t[0] += pv.MAX_PREVIEW_S + 1
    _write(rig, s, "tock")
    _poll(rig, s)
    assert rig.channel.edits == []


def _hostile(rig: Rig, s: Session, tmp_path: Path, kind: str) -> None:
    path = rig.paths(s).outbox / ".preview.json"
    if kind == "symlink":
        secret = tmp_path / "shadow"
        secret.write_text(json.dumps({"v": 1, "reply_id": RID, "channel_type": "fake",
                                      "platform_id": "chan", "thread_id": None,
                                      "text": "root:secret", "done": False, "reply": False}))  # fmt: skip
        path.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        _write(rig, s, "x" * (pv.MAX_FILE_BYTES + 10))
    elif kind == "not json":
        _write(rig, s, "", raw=b"{not json")
    elif kind == "wrong shape":
        _write(rig, s, "", raw=json.dumps({"v": 1, "reply_id": 5, "text": ["a"]}).encode())
    elif kind == "deep":
        _write(rig, s, "", raw=b"[" * 100_000)
    elif kind == "other chat":
        rig.chat("someone-else")
        _write(rig, s, "hello stranger", platform="someone-else")
    elif kind == "unknown chat":
        _write(rig, s, "hello", platform="nowhere")
    elif kind == "directory":
        path.mkdir()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "huge", "not json", "wrong shape", "deep",
                                  "other chat", "unknown chat", "directory"])  # fmt: skip
def test_hostile_preview_files_show_nothing(
    rig: Rig, t: list[float], tmp_path: Path, kind: str
) -> None:
    s = rig.one_chat_session()
    _hostile(rig, s, tmp_path, kind)
    for _ in range(3):
        t[0] += 1.1
        _poll(rig, s)
    assert rig.channel.deliveries == [] and rig.channel.edits == []


def test_control_characters_are_dropped(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    _write(rig, s, "safe\x1b[31m\u202etext\x00 here\nnext line")
    _poll(rig, s)
    t[0] += 1.1
    _poll(rig, s)
    assert rig.channel.texts() == ["safe[31mtext here\nnext line"]


def test_no_preview_where_the_channel_does_not_stream(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    rig.channel.streams_replies = False
    assert rig.host.previews.channels() == []
    rig.host.previews.start(s.id, "fake")  # no task for a channel that does not stream
    assert rig.host.previews._tasks == {}
    _write(rig, s, "hello")
    for _ in range(3):
        t[0] += 1.1
        _poll(rig, s)
    assert rig.channel.deliveries == []


def test_stream_replies_setting(rig: Rig) -> None:
    rig.channel.streams_replies = True
    keeper = rig.host.previews
    assert keeper.channels() == ["fake"]
    off = PreviewKeeper(rig.db, rig.host.sessions, rig.host.adapters,
                        {"channels": {"fake": {"stream_replies": False}}},
                        is_running=lambda s: True, heartbeat_age=lambda s: 0.0)  # fmt: skip
    assert off.channels() == []
    with pytest.raises(
        ConfigError, match=r"\[channels.fake\] stream_replies must be true or false"
    ):
        PreviewKeeper(rig.db, rig.host.sessions, rig.host.adapters,
                      {"channels": {"fake": {"stream_replies": "yes"}}},
                      is_running=lambda s: True, heartbeat_age=lambda s: 0.0)  # fmt: skip


def test_the_runner_is_told_which_channels_stream(rig: Rig) -> None:
    s = rig.one_chat_session()
    from carapace.host.host_runners import prepare

    spec: Any = rig.run(prepare(rig.host, s.id))
    assert "CARAPACE_STREAM_CHANNELS" not in spec.env
    rig.channel.streams_replies = True
    spec = rig.run(prepare(rig.host, s.id))
    assert spec.env["CARAPACE_STREAM_CHANNELS"] == "fake"


def test_split_for_edit() -> None:
    assert split_for_edit("short", 10) == ("short", "")
    assert split_for_edit("one two three four", 10) == ("one two", "three four")
    assert split_for_edit("para one\n\npara two is long", 16) == ("para one", "para two is long")
    assert split_for_edit("x" * 25, 10) == ("x" * 10, "x" * 15)
    head, rest = split_for_edit("😀" * 10, 10)  # UTF-16: two units each
    assert head == "😀" * 5 and rest == "😀" * 5


def test_the_poll_loop_ends_with_the_turn(rig: Rig, t: list[float]) -> None:
    s = rig.one_chat_session()
    keeper = rig.host.previews
    keeper.is_running = lambda sid: False

    async def go() -> None:
        pv.POLL_S, old = 0.001, pv.POLL_S
        try:
            keeper.start(s.id, "fake")
            task = keeper._tasks[s.id]
            await asyncio.sleep(0)  # the loop notes its start
            t[0] += pv.GRACE_S + 1  # past the start-up grace, no runner: the loop ends
            await asyncio.wait_for(task, 10)
        finally:
            pv.POLL_S = old
        assert s.id not in keeper._tasks

    rig.run(go())


def test_a_bad_stream_replies_setting_stops_the_host_with_one_line(tmp_path: Path) -> None:
    from carapace.config import Home, Settings
    from carapace.host.host import Host, HostOptions

    bad = Settings(extra={"channels": {"telegram": {"stream_replies": 1}}})
    with pytest.raises(ConfigError, match=r"\[channels.telegram\] stream_replies") as info:
        Host(Home(tmp_path / "home"), settings=bad, channels=[],
             options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
    assert "\n" not in str(info.value)


def test_two_agents_in_one_chat_share_its_edit_rate(rig: Rig, t: list[float]) -> None:
    mg = rig.chat("chan")
    rig.wire(mg, rig.agent("one"))
    rig.wire(mg, rig.agent("two"))
    rig.run(rig.host.route(make_event("hi", platform_id="chan", id="m1")))
    a, b = rig.sessions()
    for s, rid in ((a, "msg-ta-reply"), (b, "msg-tb-reply")):
        _write(rig, s, f"{rid} starts", rid=rid)
        _poll(rig, s)
    t[0] += 1.1
    for s in (a, b):
        _poll(rig, s)
    assert len(rig.channel.deliveries) == 2  # one preview each
    t[0] += 1.1
    for s, rid in ((a, "msg-ta-reply"), (b, "msg-tb-reply")):
        _write(rig, s, f"{rid} goes on", rid=rid)
        _poll(rig, s)
    assert len(rig.channel.edits) == 1  # the chat had an edit this second already
    t[0] += 1.1
    _poll(rig, b)
    assert len(rig.channel.edits) == 2
