"""Pure mappings of the v1 import: JIDs, triggers, folders, intervals, schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carapace.migrate.mapping import (
    Chat,
    JidError,
    folder_problem,
    interval_seconds,
    interval_to_recurrence,
    js_escape,
    map_engage,
    map_jid,
    map_schedule,
)
from carapace.sched.cron import next_after

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("jid", "chat"),
    [
        ("120363001@g.us", Chat("whatsapp", "120363001@g.us", True)),
        ("15551234567@s.whatsapp.net", Chat("whatsapp", "15551234567@s.whatsapp.net", False)),
        ("123@lid", Chat("whatsapp", "123@lid", False)),
        ("120@G.US", Chat("whatsapp", "120@G.US", True)),  # NanoClaw: is_group 0
        ("wa:123@g.us", Chat("whatsapp", "wa:123@g.us", True)),
        ("wa:123", Chat("whatsapp", "123", False)),
        ("tg:-1001234567890", Chat("telegram", "telegram:-1001234567890", True)),
        ("tg:42", Chat("telegram", "telegram:42", False)),
        ("TG:5", Chat("telegram", "telegram:5", False)),
        ("telegram:5", Chat("telegram", "telegram:5", False)),
        ("tg:telegram:5", Chat("telegram", "telegram:5", False)),
        ("slack:C0ABC", Chat("slack", "slack:C0ABC", True)),
        ("slack:D0XYZ", Chat("slack", "slack:D0XYZ", False)),  # NanoClaw: 1
        ("sig:group:abc", Chat("sig", "sig:group:abc", True)),
        ("gmail:thread1", Chat("gmail", "gmail:thread1", True)),
    ],
)
def test_map_jid(jid: str, chat: Chat) -> None:
    assert map_jid(jid) == chat


@pytest.mark.parametrize("jid", ["justtext", "12345", "a@b.com", ":x", "tg:", "dc:111"])
def test_map_jid_refuses_to_guess(jid: str) -> None:
    with pytest.raises(JidError):
        map_jid(jid)


@pytest.mark.parametrize(
    ("trigger", "requires", "is_main", "mode", "pattern", "ignored"),
    [
        ("@Andy", 1, 0, "pattern", "@Andy", "accumulate"),  # S1
        ("@Andy", 0, 1, "pattern", ".", "drop"),  # S2
        ("@Andy", 1, 1, "pattern", ".", "drop"),  # S3: carapace follows v1's is_main
        (".*", 1, 0, "pattern", ".", "drop"),  # S5
        ("   ", 1, 0, "mention", None, "accumulate"),
        ("@Bot", None, 0, "pattern", "@Bot", "accumulate"),
        ("@Bot", 0, 0, "pattern", ".", "drop"),
        ("@Bot", 2, 0, "pattern", "@Bot", "accumulate"),  # spec §4.6
        (" @Andy ", 1, 0, "pattern", "@Andy", "accumulate"),
        ("+bot", 1, 0, "pattern", r"\+bot", "accumulate"),
        ("(bot)", 1, 0, "pattern", r"\(bot\)", "accumulate"),
        (".", 1, 0, "pattern", ".", "drop"),
    ],
)
def test_map_engage(
    trigger: str, requires: int | None, is_main: int, mode: str, pattern: str | None, ignored: str
) -> None:
    e = map_engage(trigger, requires, is_main)
    assert (e.mode, e.pattern, e.ignored_message_policy) == (mode, pattern, ignored)


@given(st.text(max_size=30))
def test_escaped_trigger_matches_itself_literally(text: str) -> None:
    import re

    assert re.search(js_escape(text), text) is not None


@pytest.mark.parametrize(
    ("folder", "ok"),
    [("main", True), ("whatsapp_family-chat", True), ("../x", False), ("global", False),
     ("Global", False), ("a b", False), (" main", False), ("x" * 65, False), ("a.b", False)],
)  # fmt: skip
def test_folder_rule(folder: str, ok: bool) -> None:
    assert (folder_problem(folder) is None) == ok


@pytest.mark.parametrize(
    ("value", "secs"),
    [("3600000", 3600), ("15m", 900), ("2h", 7200), ("3d", 259200), ("30s", 30),
     ("1.5h", 5400), ("0m", None), ("0", None), ("-5", None), ("abc", None), ("", None)],
)  # fmt: skip
def test_interval_seconds(value: str, secs: int | None) -> None:
    assert interval_seconds(value) == secs


ANCHOR = datetime(2026, 6, 1, 10, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("secs", "expected"),
    [(60, "* * * * *"), (900, "5/15 * * * *"), (300, "*/5 * * * *"), (3600, "5 * * * *"),
     (7200, "5 */2 * * *"), (3 * 3600, "5 1/3 * * *"), (86400, "5 10 * * *"),
     (7 * 86400, "5 10 * * 1"), (5400, "@every 5400s"), (2 * 86400, "@every 172800s"),
     (30, "@every 30s"), (7 * 60, "@every 420s")],
)  # fmt: skip
def test_interval_to_recurrence(secs: int, expected: str) -> None:
    assert interval_to_recurrence(secs, ANCHOR, "UTC") == expected


@given(st.sampled_from([60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 86400]),
       st.integers(min_value=0, max_value=10**6))  # fmt: skip
def test_exact_interval_crons_keep_the_v1_phase(secs: int, offset_min: int) -> None:
    anchor = ANCHOR + timedelta(minutes=offset_min)
    expr = interval_to_recurrence(secs, anchor, "UTC")
    assert not expr.startswith("@every")
    t = anchor
    for _ in range(3):  # the next fires are exactly one interval apart, in phase with v1
        nxt = next_after(expr, "UTC", t)
        assert nxt == t + timedelta(seconds=secs)
        t = nxt


def test_schedule_cron_active_uses_next_run() -> None:
    s = map_schedule("cron", " 0 9 * * * ", "2026-06-01T07:00:00.000Z", "active", None,
                     v1_tz="UTC", tz="UTC", now=NOW)  # fmt: skip
    assert (s.status, s.process_after, s.recurrence) == (
        "pending", "2026-06-01T07:00:00.000Z", "0 9 * * *",
    )  # fmt: skip


def test_schedule_cron_without_next_run_is_computed_in_tz() -> None:
    s = map_schedule("cron", "0 9 * * *", None, "active", None,
                     v1_tz="Europe/Berlin", tz="Europe/Berlin", now=NOW)  # fmt: skip
    assert s.process_after == "2026-03-02T08:00:00.000Z"


def test_schedule_invalid_cron_is_kept_paused() -> None:
    s = map_schedule("cron", "61 * * * *", "2026-06-01T07:00:00.000Z", "active", None,
                     v1_tz="UTC", tz="UTC", now=NOW)  # fmt: skip
    assert s.status == "paused" and s.needs_person and "61 * * * *" in s.needs_person


def test_schedule_once() -> None:
    past = map_schedule("once", "2025-01-01T00:00:00", "2025-01-01T00:00:00.000Z", "active",
                        None, v1_tz="UTC", tz="UTC", now=NOW)  # fmt: skip
    assert (past.status, past.process_after, past.recurrence) == (
        "pending", "2025-01-01T00:00:00.000Z", None,
    )  # fmt: skip
    local = map_schedule("once", "2026-02-01T15:30:00", None, "active", None,
                         v1_tz="America/New_York", tz="UTC", now=NOW)  # fmt: skip
    assert local.process_after == "2026-02-01T20:30:00.000Z"  # v1 read it as host-local time
    bad = map_schedule("once", "tomorrow", None, "active", None, v1_tz="UTC", tz="UTC", now=NOW)
    assert bad.status == "paused" and bad.needs_person


def test_schedule_unknown_type_paused_and_status_mapping() -> None:
    weekly = map_schedule("weekly", "mon", None, "active", None, v1_tz="UTC", tz="UTC", now=NOW)
    assert weekly.status == "paused" and weekly.needs_person
    paused = map_schedule("interval", "900000", "2026-06-01T07:00:00.000Z", "paused", None,
                          v1_tz="UTC", tz="UTC", now=NOW)  # fmt: skip
    assert (paused.status, paused.recurrence) == ("paused", "*/15 * * * *")
    done = map_schedule("once", "2026-01-01T10:00:00", None, "completed",
                        "2026-01-01T10:00:01.000Z", v1_tz="UTC", tz="UTC", now=NOW)  # fmt: skip
    assert (done.status, done.process_after, done.recurrence) == (
        "completed", "2026-01-01T10:00:01.000Z", None,
    )  # fmt: skip
    cron_done = map_schedule("cron", "0 9 * * *", None, "completed", None,
                             v1_tz="UTC", tz="UTC", now=NOW)  # fmt: skip
    assert cron_done.recurrence is None  # a completed row must never be cloned again
