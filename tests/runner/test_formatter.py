"""Prompt formatting and time helpers (spec §6, §17 formatter/timezone pins, W-14/W-17 fixes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carapace.runner.formatter import (
    escape_xml,
    format_local_time,
    format_messages,
    is_clear_command,
    parse_zoned_to_utc,
    strip_internal_tags,
)
from carapace.runner.inbound import InRow


def row(
    kind: str = "chat",
    content: dict[str, Any] | str | None = None,
    *,
    seq: int | None = 2,
    id: str = "m1",
    ts: str = "2026-02-04T18:30:00.000Z",
    channel_type: str | None = None,
    platform_id: str | None = None,
) -> InRow:
    body = content if isinstance(content, str) else json.dumps(content or {"text": "hi"})
    return InRow(
        id=id,
        seq=seq,
        kind=kind,
        timestamp=ts,
        status="pending",
        process_after=None,
        recurrence=None,
        series_id=None,
        trigger=1,
        platform_id=platform_id,
        channel_type=channel_type,
        thread_id=None,
        content=body,
    )


def dests(channel_type: str | None, platform_id: str | None) -> str | None:
    if (channel_type, platform_id) == ("discord", "chan-1"):
        return "discord-main"
    return None


def test_header_always_present() -> None:
    assert format_messages([], "UTC") == '<context timezone="UTC" />\n'
    out = format_messages([row(), row(id="m2", seq=4)], "UTC")
    assert out.index("<context") < out.index("<messages>")


def test_local_time_pins() -> None:
    t = format_local_time("2026-02-04T18:30:00.000Z", "America/New_York")
    assert t == "Feb 4, 2026, 1:30 PM"
    assert format_local_time("2026-02-04T12:00:00Z", "America/New_York").startswith(
        "Feb 4, 2026, 7:00"
    )
    assert "9:00 PM" in format_local_time("2026-02-04T12:00:00Z", "Asia/Tokyo")
    assert "12:00 PM" in format_local_time("2026-02-04T12:00:00Z", "Not/AZone")
    assert format_local_time("garbage", "UTC") == "Invalid Date"


def test_sqlite_timestamps_are_utc_not_local() -> None:
    # W-14: NanoClaw showed 6:30 PM for a task written at 18:30 UTC in New York
    assert format_local_time("2026-02-04 18:30:00", "America/New_York") == "Feb 4, 2026, 1:30 PM"


def test_parse_zoned_to_utc_pins_and_dst() -> None:
    assert parse_zoned_to_utc("2026-01-15T09:00:00", "America/New_York") == datetime(
        2026, 1, 15, 14, tzinfo=UTC
    )
    assert parse_zoned_to_utc("2026-06-15T09:00:00", "Asia/Tokyo") == datetime(
        2026, 6, 15, 0, tzinfo=UTC
    )
    assert parse_zoned_to_utc("2026-06-15T09:00:00Z", "Asia/Tokyo").hour == 9
    assert parse_zoned_to_utc("2026-06-15T09:00:00+02:00", "UTC").hour == 7
    assert parse_zoned_to_utc("2026-01-15T09:00:00", "Bogus/Zone").hour == 9
    # the DST windows NanoClaw got wrong (spec §6.9)
    assert parse_zoned_to_utc("2026-03-08T05:00:00", "America/New_York").hour == 9
    assert parse_zoned_to_utc("2026-11-01T03:00:00", "America/New_York").hour == 8


def test_reply_to_and_quote() -> None:
    both = row(content={"text": "yes", "replyTo": {"id": 42, "sender": "Bob", "text": "q?"}})
    out = format_messages([both], "UTC")
    assert 'reply_to="42"' in out
    assert '\n  <quoted_message from="Bob">q?</quoted_message>\n' in out
    only_id = format_messages([row(content={"text": "x", "replyTo": {"id": 42}})], "UTC")
    assert 'reply_to="42"' in only_id and "quoted_message" not in only_id
    assert "reply_to" not in format_messages([row()], "UTC")


def test_escaping() -> None:
    assert escape_xml("A & B <Co>") == "A &amp; B &lt;Co&gt;"
    assert (
        escape_xml('<script>alert("xss")</script>')
        == "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;"
    )
    assert escape_xml("x > y && z") == "x &gt; y &amp;&amp; z"


def test_kinds() -> None:
    one = format_messages([row(content={"text": "Hello", "sender": "John"})], "UTC")
    assert 'sender="John"' in one and "Hello" in one and "<messages>" not in one
    assert '<message id="2" sender="John" time="Feb 4, 2026, 6:30 PM">Hello</message>' in one
    task = format_messages([row("task", {"prompt": "Review PRs", "script": None})], "UTC")
    assert '<task time="Feb 4, 2026, 6:30 PM">Instructions:\nReview PRs</task>' in task
    hook = format_messages([row("webhook", {"source": "github", "event": "push"})], "UTC")
    assert 'source="github"' in hook and 'event="push"' in hook
    system = format_messages([row("system", {"action": "register_group", "result": {}})], "UTC")
    assert "<system_response" in system and 'action="register_group"' in system


def test_script_output_in_task() -> None:
    out = format_messages([row("task", {"prompt": "p", "scriptOutput": {"n": 1}})], "UTC")
    assert 'Script output:\n{\n  "n": 1\n}\n\nInstructions:\np</task>' in out


def test_sender_fallbacks_and_malformed_json() -> None:
    assert 'sender="Ann"' in format_messages([row(content={"author": {"fullName": "Ann"}})], "UTC")
    assert 'sender="Unknown"' in format_messages([row(content={"text": "a"})], "UTC")
    raw = format_messages([row(content="not json {")], "UTC")
    assert ">not json {</message>" in raw


def test_from_attribute() -> None:
    matched = row(channel_type="discord", platform_id="chan-1")
    assert 'from="discord-main"' in format_messages([matched], "UTC", dests)
    other = row(channel_type="telegram", platform_id="chat-999")
    assert 'from="unknown:telegram:chat-999"' in format_messages([other], "UTC", dests)
    assert "from=" not in format_messages([row()], "UTC", dests)
    task = row("task", {"prompt": "x"}, channel_type="discord", platform_id="chan-1")
    assert '<task from="discord-main"' in format_messages([task], "UTC", dests)


def test_timeline_order_is_kept_and_unknown_kinds_shown() -> None:
    rows = [
        row("task", {"prompt": "first"}, id="t", seq=2),
        row(content={"text": "second"}, id="c", seq=4),
        row("weird", {"x": 1}, id="w", seq=6),
    ]
    out = format_messages(rows, "UTC")
    assert out.index("first") < out.index("second") < out.index('<event kind="weird"')


def test_attachments(tmp_path: Path) -> None:
    content = {
        "text": "see",
        "attachments": [
            {"name": "a.png", "type": "image", "localPath": "inbox/m1/a.png"},
            {"filename": "b.pdf", "url": "https://x/b.pdf"},
            {},
        ],
    }
    out = format_messages([row(content=content)], "UTC", session_dir=tmp_path)
    assert f"see\n[image: a.png — saved to {tmp_path}/inbox/m1/a.png]" in out
    assert "[file: b.pdf (https://x/b.pdf)]" in out
    assert "[file: attachment]</message>" in out


def test_strip_internal_tags() -> None:
    assert strip_internal_tags("hello <internal>x</internal> world") == "hello  world"
    assert strip_internal_tags("<internal>a\nb</internal>ok") == "ok"
    assert strip_internal_tags("<internal>a</internal>x<internal>b</internal>") == "x"
    assert strip_internal_tags("<internal>only</internal>") == ""
    assert strip_internal_tags("unchanged") == "unchanged"


def test_clear_command_is_a_whole_word() -> None:
    assert is_clear_command(row(content={"text": " /clear "}))
    assert is_clear_command(row(content={"text": "/CLEAR now"}))
    assert not is_clear_command(row(content={"text": "/clearance"}))
    assert not is_clear_command(row("task", {"text": "/clear"}))


def test_task_time_in_the_tasks_own_zone() -> None:
    own = format_messages(
        [row("task", {"prompt": "p", "timezone": "America/New_York"})], "Europe/London"
    )
    assert 'time="Feb 4, 2026, 1:30 PM" timezone="America/New_York"' in own
    same = format_messages([row("task", {"prompt": "p", "timezone": "UTC"})], "UTC")
    assert 'time="Feb 4, 2026, 6:30 PM">' in same and "timezone=" not in same.split("<task")[1]
    bogus = format_messages([row("task", {"prompt": "p", "timezone": "Mars/Base"})], "UTC")
    assert 'time="Feb 4, 2026, 6:30 PM">' in bogus
