"""Tests for carapace.sched.cron: known answers, DST cases and brute-force properties.

The properties compare ``next_after`` with an independent brute force: random expressions are
generated together with the sets they mean, and fire times are found by walking the UTC
timeline minute by minute (or second by second) and reading the local wall clock.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from carapace.errors import ValidationError
from carapace.sched.cron import (
    CronSpec,
    next_after,
    occurrences_between,
    parse_cron,
    validate_cron,
    validate_timezone,
)

MINUTE = timedelta(minutes=1)
ZONES = (
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "Antarctica/Troll",  # two-hour shifts
    "Europe/Dublin",  # "negative DST" in tzdata
)


def at(
    tz: str,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    fold: int = 0,
) -> datetime:
    """An aware local time in ``tz``."""
    return datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(tz), fold=fold)


def fires(expr: str, tz: str, after: datetime, n: int) -> list[str]:
    """The next ``n`` fire times, as local ISO strings with their offsets."""
    zone = ZoneInfo(tz)
    out = occurrences_between(expr, tz, after, after + timedelta(days=100 * 366), n)
    assert all(t.tzinfo is UTC for t in out)
    return [t.astimezone(zone).isoformat() for t in out]


@functools.cache
def transitions(tz: str, year: int) -> tuple[datetime, ...]:
    """UTC instants where the zone's offset changes during ``year`` (hourly scan, then minutes)."""
    zone = ZoneInfo(tz)
    out = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    while t.year == year:
        nxt = t + timedelta(hours=1)
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            m = t
            while m.astimezone(zone).utcoffset() == t.astimezone(zone).utcoffset():
                m += MINUTE
            out.append(m)
        t = nxt
    return tuple(out)


# -- known answers --------------------------------------------------------------------------

KNOWN: list[tuple[str, str, datetime, list[str]]] = [
    # weekdays at 9, across a weekend (Fri 2026-01-02 after 9:00)
    (
        "0 9 * * 1-5",
        "America/New_York",
        at("America/New_York", 2026, 1, 2, 12),
        ["2026-01-05T09:00:00-05:00", "2026-01-06T09:00:00-05:00"],
    ),
    (
        "0 9 * * MON-FRI",
        "UTC",
        at("UTC", 2026, 1, 3, 0),
        ["2026-01-05T09:00:00+00:00"],
    ),
    # the 31st skips short months
    (
        "0 0 31 * *",
        "UTC",
        at("UTC", 2026, 1, 31, 0),
        ["2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00", "2026-07-31T00:00:00+00:00"],
    ),
    # Feb 29 only in leap years
    (
        "0 0 29 2 *",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
    ),
    # last Friday of the month
    (
        "0 12 * * 5L",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2026-01-30T12:00:00+00:00", "2026-02-27T12:00:00+00:00", "2026-03-27T12:00:00+00:00"],
    ),
    ("0 12 * * FRIL", "UTC", at("UTC", 2026, 1, 1), ["2026-01-30T12:00:00+00:00"]),
    # second Monday
    (
        "0 9 * * 1#2",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2026-01-12T09:00:00+00:00", "2026-02-09T09:00:00+00:00", "2026-03-09T09:00:00+00:00"],
    ),
    # last day of the month
    (
        "0 0 L * *",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2026-01-31T00:00:00+00:00", "2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"],
    ),
    ("0 0 L 2 *", "UTC", at("UTC", 2027, 3, 1), ["2028-02-29T00:00:00+00:00"]),
    # nearest weekday: Feb 15 2026 is a Sunday -> Mon 16; Aug 15 2026 is a Saturday -> Fri 14
    (
        "0 0 15W * *",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2026-01-15T00:00:00+00:00", "2026-02-16T00:00:00+00:00", "2026-03-16T00:00:00+00:00"],
    ),
    ("0 0 15W 8 *", "UTC", at("UTC", 2026, 1, 1), ["2026-08-14T00:00:00+00:00"]),
    # 1W never leaves the month: Aug 1 2026 is a Saturday -> Mon 3
    ("0 0 1W 8 *", "UTC", at("UTC", 2026, 1, 1), ["2026-08-03T00:00:00+00:00"]),
    # 31W: May 31 2026 is a Sunday -> Fri 29
    ("0 0 31W 5 *", "UTC", at("UTC", 2026, 1, 1), ["2026-05-29T00:00:00+00:00"]),
    # last weekday: Jan 31 2026 is a Saturday -> Fri 30
    (
        "0 0 LW * *",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2026-01-30T00:00:00+00:00", "2026-02-27T00:00:00+00:00", "2026-03-31T00:00:00+00:00"],
    ),
    # day-of-month OR day-of-week when both are restricted
    (
        "0 0 1 * 1",
        "UTC",
        at("UTC", 2026, 1, 20),
        [
            "2026-01-26T00:00:00+00:00",
            "2026-02-01T00:00:00+00:00",
            "2026-02-02T00:00:00+00:00",
            "2026-02-09T00:00:00+00:00",
        ],
    ),
    # '*' and '?' leave the other field alone (AND with everything)
    ("0 0 ? * 1", "UTC", at("UTC", 2026, 1, 27), ["2026-02-02T00:00:00+00:00"]),
    ("0 0 13 * ?", "UTC", at("UTC", 2026, 1, 27), ["2026-02-13T00:00:00+00:00"]),
    # cron-parser: '*/1' counts as restricted, so OR applies (odd days OR Fridays)
    (
        "0 0 */2 * 5",
        "UTC",
        at("UTC", 2026, 1, 27),
        ["2026-01-29T00:00:00+00:00", "2026-01-30T00:00:00+00:00", "2026-01-31T00:00:00+00:00"],
    ),
    # Sunday as 0 and 7
    ("0 0 * * 7", "UTC", at("UTC", 2026, 1, 1), ["2026-01-04T00:00:00+00:00"]),
    ("0 0 * * 5-7", "UTC", at("UTC", 2026, 1, 3, 1), ["2026-01-04T00:00:00+00:00"]),
    # seconds field
    (
        "*/20 * * * * *",
        "UTC",
        at("UTC", 2026, 1, 1, 0, 0, 30),
        ["2026-01-01T00:00:40+00:00", "2026-01-01T00:01:00+00:00", "2026-01-01T00:01:20+00:00"],
    ),
    ("30 5 9 * * *", "UTC", at("UTC", 2026, 1, 1, 9, 5, 30), ["2026-01-02T09:05:30+00:00"]),
    # steps: '5/15' starts at 5, '1-10/4' inside a range
    (
        "5/15 * * * *",
        "UTC",
        at("UTC", 2026, 1, 1, 0, 50),
        ["2026-01-01T01:05:00+00:00", "2026-01-01T01:20:00+00:00"],
    ),
    (
        "1-10/4 0 * * *",
        "UTC",
        at("UTC", 2026, 1, 1),
        ["2026-01-01T00:01:00+00:00", "2026-01-01T00:05:00+00:00", "2026-01-01T00:09:00+00:00"],
    ),
    # names, any case, in months and lists
    ("0 0 1 jan,Jul *", "UTC", at("UTC", 2026, 2, 1), ["2026-07-01T00:00:00+00:00"]),
    # macros
    ("@yearly", "UTC", at("UTC", 2026, 5, 5), ["2027-01-01T00:00:00+00:00"]),
    ("@annually", "UTC", at("UTC", 2026, 5, 5), ["2027-01-01T00:00:00+00:00"]),
    ("@monthly", "UTC", at("UTC", 2026, 5, 5), ["2026-06-01T00:00:00+00:00"]),
    ("@weekly", "UTC", at("UTC", 2026, 5, 5), ["2026-05-10T00:00:00+00:00"]),
    ("@daily", "UTC", at("UTC", 2026, 5, 5, 3), ["2026-05-06T00:00:00+00:00"]),
    ("@midnight", "UTC", at("UTC", 2026, 5, 5, 3), ["2026-05-06T00:00:00+00:00"]),
    ("@hourly", "UTC", at("UTC", 2026, 5, 5, 3, 1), ["2026-05-05T04:00:00+00:00"]),
    ("@HOURLY", "UTC", at("UTC", 2026, 5, 5, 3, 1), ["2026-05-05T04:00:00+00:00"]),
    ("@weekdays", "UTC", at("UTC", 2026, 5, 8, 3), ["2026-05-11T00:00:00+00:00"]),
    # rare but possible: Feb 29 on a Monday (next after 2024 is 2044); the year 2100 is no leap
    ("0 0 * 2 1#5", "UTC", at("UTC", 2026, 1, 1), ["2044-02-29T00:00:00+00:00"]),
    ("0 0 29 2 *", "UTC", at("UTC", 2096, 3, 1), ["2104-02-29T00:00:00+00:00"]),
    # a time zone far from UTC, and an 'after' in another zone
    (
        "0 9 * * *",
        "Asia/Kolkata",
        at("America/New_York", 2026, 1, 1, 12),
        ["2026-01-02T09:00:00+05:30"],
    ),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), KNOWN)
def test_known_answers(expr: str, tz: str, after: datetime, expected: list[str]) -> None:
    assert fires(expr, tz, after, len(expected)) == expected


def test_strictly_after_and_microseconds() -> None:
    t = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    assert next_after("0 9 * * *", "UTC", t) == t + timedelta(days=1)
    assert next_after("0 9 * * *", "UTC", t - timedelta(microseconds=1)) == t
    assert next_after("0 9 * * *", "UTC", t + timedelta(microseconds=1)) == t + timedelta(days=1)


def test_parse_once_and_spec_api() -> None:
    spec = parse_cron("*/15 9-17 * * 1-5")
    assert isinstance(spec, CronSpec)
    assert spec.minutes == (0, 15, 30, 45)
    assert spec.hours == tuple(range(9, 18))
    assert parse_cron("*/15 9-17 * * 1-5") is spec  # cached
    assert not spec.interval_like
    assert parse_cron("*/15 * * * *").interval_like
    after = datetime(2026, 1, 2, 17, 50, tzinfo=UTC)
    assert spec.next_after(ZoneInfo("UTC"), after) == datetime(2026, 1, 5, 9, tzinfo=UTC)
    with pytest.raises(AttributeError):
        spec.hours = (1,)  # type: ignore[misc]


def test_iter_after() -> None:
    spec = parse_cron("0 */6 * * *")
    it = spec.iter_after("UTC", datetime(2026, 1, 1, 1, tzinfo=UTC))
    assert [next(it).hour for _ in range(5)] == [6, 12, 18, 0, 6]


def test_non_string_expression_is_a_validation_error() -> None:
    for bad in (None, 5, ["0 0 * * *"]):
        with pytest.raises(ValidationError, match="must be a string"):
            validate_cron(bad)  # type: ignore[arg-type]


def test_naive_after_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_after("* * * * *", "UTC", datetime(2026, 1, 1))


def test_near_year_9999_errors_clearly() -> None:
    with pytest.raises(ValidationError, match="no fire time"):
        next_after("0 0 1 1 *", "UTC", datetime(9999, 6, 1, tzinfo=UTC))


# -- occurrences_between ----------------------------------------------------------------------


def test_occurrences_between_bounds_and_limit() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert occurrences_between("0 * * * *", "UTC", start, end, 10) == [
        datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2, 3)
    ]  # start excluded, end included
    assert occurrences_between("0 * * * *", "UTC", start, end, 2) == [
        datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2)
    ]
    assert occurrences_between("0 * * * *", "UTC", start, end, 0) == []
    assert occurrences_between("0 * * * *", "UTC", end, start, 5) == []
    with pytest.raises(ValueError):
        occurrences_between("0 * * * *", "UTC", start, end, -1)


def test_occurrences_catch_up_across_fall_back() -> None:
    # a host down across the New York fall-back sees every hourly slot once per real hour
    start = at("America/New_York", 2026, 11, 1, 0, 10)
    end = at("America/New_York", 2026, 11, 1, 3, 10)
    got = occurrences_between("0 * * * *", "America/New_York", start, end, 100)
    assert [t.isoformat() for t in got] == [
        "2026-11-01T05:00:00+00:00",
        "2026-11-01T06:00:00+00:00",
        "2026-11-01T07:00:00+00:00",
        "2026-11-01T08:00:00+00:00",
    ]


# -- DST --------------------------------------------------------------------------------------


def test_transition_dates_used_below() -> None:
    def local_dates(tz: str) -> list[date]:
        return [t.astimezone(ZoneInfo(tz)).date() for t in transitions(tz, 2026)]

    assert local_dates("America/New_York") == [date(2026, 3, 8), date(2026, 11, 1)]
    assert local_dates("Europe/London") == [date(2026, 3, 29), date(2026, 10, 25)]
    assert local_dates("Australia/Lord_Howe") == [date(2026, 4, 5), date(2026, 10, 4)]
    assert local_dates("America/Santiago") == [date(2026, 4, 4), date(2026, 9, 6)]


NY = "America/New_York"
LH = "Australia/Lord_Howe"

DST: list[tuple[str, str, datetime, list[str]]] = [
    # New York spring forward 2026-03-08 02:00 EST -> 03:00 EDT
    (
        "30 2 * * *",
        NY,
        at(NY, 2026, 3, 7, 12),
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    ),
    ("0 2 * * *", NY, at(NY, 2026, 3, 7, 12), ["2026-03-08T03:00:00-04:00"]),
    # several skipped wall times collapse into one fire, and 03:00 itself is that same instant
    (
        "0,30 2,3 * * *",
        NY,
        at(NY, 2026, 3, 8, 1),
        ["2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00", "2026-03-09T02:00:00-04:00"],
    ),
    # interval-like jobs follow real time: nothing extra for the missing hour
    (
        "*/15 * * * *",
        NY,
        at(NY, 2026, 3, 8, 1, 40),
        ["2026-03-08T01:45:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:15:00-04:00"],
    ),
    (
        "30 * * * *",
        NY,
        at(NY, 2026, 3, 8, 0, 40),
        ["2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00"],
    ),
    # New York fall back 2026-11-01 02:00 EDT -> 01:00 EST: fixed jobs fire once (first pass)
    (
        "30 1 * * *",
        NY,
        at(NY, 2026, 11, 1, 0, 50),
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
    ),
    (
        "*/20 1 * * *",
        NY,
        at(NY, 2026, 11, 1, 0, 50),
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:20:00-04:00",
            "2026-11-01T01:40:00-04:00",
            "2026-11-02T01:00:00-05:00",
        ],
    ),
    # ... interval-like jobs fire in both passes
    (
        "*/15 * * * *",
        NY,
        at(NY, 2026, 11, 1, 1, 40),
        [
            "2026-11-01T01:45:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T01:15:00-05:00",
            "2026-11-01T01:30:00-05:00",
            "2026-11-01T01:45:00-05:00",
            "2026-11-01T02:00:00-05:00",
        ],
    ),
    (
        "30 * * * *",
        NY,
        at(NY, 2026, 11, 1, 0, 40),
        ["2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-05:00"],
    ),
    # 'after' inside the second pass (fold=1)
    ("30 1 * * *", NY, at(NY, 2026, 11, 1, 1, 10, fold=1), ["2026-11-02T01:30:00-05:00"]),
    ("*/15 * * * *", NY, at(NY, 2026, 11, 1, 1, 10, fold=1), ["2026-11-01T01:15:00-05:00"]),
    ("0 2 * * *", NY, at(NY, 2026, 11, 1, 1, 10, fold=1), ["2026-11-01T02:00:00-05:00"]),
    # London: 2026-03-29 01:00 GMT -> 02:00 BST; 2026-10-25 02:00 BST -> 01:00 GMT
    ("30 1 * * *", "Europe/London", at("UTC", 2026, 3, 28, 12), ["2026-03-29T02:00:00+01:00"]),
    (
        "30 1 * * *",
        "Europe/London",
        at("UTC", 2026, 10, 24, 12),
        ["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"],
    ),
    (
        "0 * * * *",
        "Europe/London",
        at("UTC", 2026, 10, 24, 23, 30),
        ["2026-10-25T01:00:00+01:00", "2026-10-25T01:00:00+00:00", "2026-10-25T02:00:00+00:00"],
    ),
    # Lord Howe: 2026-04-05 02:00 +11 -> 01:30 +10:30 (01:30-01:59 repeat) ...
    (
        "45 1 * * *",
        LH,
        at(LH, 2026, 4, 4, 12),
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
    ),
    (
        "*/15 * * * *",
        LH,
        at(LH, 2026, 4, 5, 1, 20),
        [
            "2026-04-05T01:30:00+11:00",
            "2026-04-05T01:45:00+11:00",
            "2026-04-05T01:30:00+10:30",
            "2026-04-05T01:45:00+10:30",
            "2026-04-05T02:00:00+10:30",
        ],
    ),
    # ... and 2026-10-04 02:00 +10:30 -> 02:30 +11 (02:00-02:29 missing)
    ("15 2 * * *", LH, at(LH, 2026, 10, 3, 12), ["2026-10-04T02:30:00+11:00"]),
    ("0 2 * * *", LH, at(LH, 2026, 10, 3, 12), ["2026-10-04T02:30:00+11:00"]),
    (
        "*/15 * * * *",
        LH,
        at(LH, 2026, 10, 4, 1, 50),
        ["2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"],
    ),
    ("15 * * * *", LH, at(LH, 2026, 10, 4, 1, 20), ["2026-10-04T03:15:00+11:00"]),
    # Samoa skipped 2011-12-30 entirely: a fixed job fires once, at the start of the 31st
    (
        "0 9 * * *",
        "Pacific/Apia",
        at("Pacific/Apia", 2011, 12, 29, 12),
        ["2011-12-31T00:00:00+14:00", "2011-12-31T09:00:00+14:00"],
    ),
    # Troll shifts by two hours
    ("30 1 * * *", "Antarctica/Troll", at("UTC", 2026, 3, 29), ["2026-03-29T03:00:00+02:00"]),
    # Santiago changes at midnight: 2026-09-06 00:00 -> 01:00; 2026-04-05 00:00 -> 04-04 23:00
    (
        "0 0 * * *",
        "America/Santiago",
        at("UTC", 2026, 9, 5, 12),
        ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"],
    ),
    (
        "30 23 * * *",
        "America/Santiago",
        at("UTC", 2026, 4, 4, 12),
        ["2026-04-04T23:30:00-03:00", "2026-04-05T23:30:00-04:00"],
    ),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), DST)
def test_dst(expr: str, tz: str, after: datetime, expected: list[str]) -> None:
    assert fires(expr, tz, after, len(expected)) == expected


# -- validation -------------------------------------------------------------------------------

INVALID = [
    ("", "expected 5 fields"),
    ("* * * *", "got 4"),
    ("* * * * * * *", "got 7"),
    ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
    ("0 24 * * *", "hour field '24'"),
    ("0 0 0 * *", "day-of-month field '0'"),
    ("0 0 32 * *", "day-of-month field '32'"),
    ("0 0 * 13 *", "month field '13'"),
    ("0 0 * * 8", "day-of-week field '8'"),
    ("60 * * * * *", "second field '60'"),
    ("5-1 * * * *", "runs backwards"),
    ("*/0 * * * *", "at least 1"),
    ("1,,2 * * * *", "empty item"),
    ("a * * * *", "minute field 'a': cannot parse 'a'"),
    ("0 0 * FOO *", "month field 'FOO'"),
    ("0 0 * * MON-BAR", "day-of-week field 'MON-BAR'"),
    ("0 0 * MON *", "month field 'MON'"),
    ("0 0 * * JAN", "day-of-week field 'JAN'"),
    ("? * * * *", "minute field '?'"),
    ("0 0 L-2 * *", "'L-<n>' (days before the last) is not supported"),
    ("H * * * *", "'H' (hashed values) is not supported"),
    ("0 0 * * L", "L alone is not supported"),
    ("0 0 * * 1#6", "occurrence after # must be 1-5"),
    ("0 0 * * 1#0", "occurrence after # must be 1-5"),
    ("0 0 1-5W * *", "day-of-month field '1-5W'"),
    ("0 0 32W * *", "32 is out of range 1-31"),
    ("0 0 * * 8L", "8 is out of range 0-7"),
    ("@reboot", "unknown cron macro '@reboot'"),
    ("0 0 30 2 *", "can never fire"),
    ("0 0 31 4,6 *", "can never fire"),
    ("0 0 30,31 FEB ?", "can never fire"),
]


@pytest.mark.parametrize(("expr", "message"), INVALID)
def test_invalid_expressions(expr: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_cron(expr)
    assert message in str(info.value)
    with pytest.raises(ValidationError):
        next_after(expr, "UTC", datetime(2026, 1, 1, tzinfo=UTC))


def test_impossible_expression_message_names_fields() -> None:
    with pytest.raises(ValidationError, match=r"day-of-month '30'.*month '2'"):
        validate_cron("0 0 30 2 *")
    validate_cron("0 0 30 2 1")  # OR with Mondays in February: fine
    validate_cron("0 0 29 2 *")  # leap years


@pytest.mark.parametrize(
    "expr",
    ["* * * * *", "0 0 * * *", "0   9  *  *  1-5 ", "0 0 ? * MON#1", "0 0 lw * *", "0 0 * * fril"],
)
def test_valid_expressions(expr: str) -> None:
    validate_cron(expr)


def test_timezones() -> None:
    assert validate_timezone("Europe/London") == ZoneInfo("Europe/London")
    assert validate_timezone("UTC") == ZoneInfo("UTC")
    for bad in ["Mars/Olympus", "", "America", "../etc/passwd", "/etc/localtime", "localtime"]:
        with pytest.raises(ValidationError, match="unknown time zone"):
            validate_timezone(bad)
    with pytest.raises(ValidationError, match="unknown time zone"):
        next_after("* * * * *", "Not/AZone", datetime(2026, 1, 1, tzinfo=UTC))


# -- properties against a brute force --------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """What a generated expression means, kept apart from the module's own parsing."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    dom_star: bool
    dom: tuple[str, ...]  # "n", "L", "LW", "nW"
    dow_star: bool
    dow: tuple[str, ...]  # "n" (0-6), "nL", "n#k"

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - models are few and short-lived
    def day_ok(self, d: date) -> bool:
        length = ((d.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)).day
        cron_wd = d.isoweekday() % 7
        weekdays = [x for x in range(1, length + 1) if d.replace(day=x).isoweekday() <= 5]

        def dom_item(item: str) -> bool:
            if item == "L":
                return d.day == length
            if item == "LW":
                return d.day == max(weekdays)
            if item.endswith("W"):
                n = int(item[:-1])
                return n <= length and d.day == min(weekdays, key=lambda x: abs(x - n))
            return d.day == int(item)

        def dow_item(item: str) -> bool:
            if item.endswith("L"):
                return cron_wd == int(item[:-1]) and (d + timedelta(days=7)).month != d.month
            if "#" in item:
                wd, k = map(int, item.split("#"))
                same = [x for x in range(1, d.day + 1) if d.replace(day=x).isoweekday() % 7 == wd]
                return cron_wd == wd and len(same) == k
            return cron_wd == int(item)

        dom_ok = any(dom_item(i) for i in self.dom)
        dow_ok = any(dow_item(i) for i in self.dow)
        if self.dom_star:
            return True if self.dow_star else dow_ok
        return dom_ok if self.dow_star else dom_ok or dow_ok

    def matches(self, wall: datetime) -> bool:
        return (
            wall.second in self.seconds
            and wall.minute in self.minutes
            and wall.hour in self.hours
            and wall.month in self.months
            and self.day_ok(wall.date())
        )


MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@st.composite
def numeric(
    draw: st.DrawFn, lo: int, hi: int, names: list[str] | None = None, star: float = 0.5
) -> tuple[str, frozenset[int]]:
    """A field in plain cron syntax and the values it allows."""
    if star >= 1 or draw(st.floats(0, 1)) < star:
        return "*", frozenset(range(lo, hi + 1))

    def show(v: int) -> str:
        if names and 0 <= v - lo < len(names) and draw(st.booleans()):
            return names[v - lo]
        return str(v)

    texts, values = [], set()
    for _ in range(draw(st.integers(1, 3))):
        a, b = sorted((draw(st.integers(lo, hi)), draw(st.integers(lo, hi))))
        step = draw(st.integers(1, max(1, (hi - lo) // 2)))
        kind = draw(st.sampled_from(["one", "range", "star-step", "range-step", "start-step"]))
        if kind == "one":
            texts.append(show(a))
            values.add(a)
        elif kind == "range":
            texts.append(f"{show(a)}-{show(b)}")
            values.update(range(a, b + 1))
        elif kind == "star-step":
            texts.append(f"*/{step}")
            values.update(range(lo, hi + 1, step))
        elif kind == "range-step":
            texts.append(f"{a}-{b}/{step}")
            values.update(range(a, b + 1, step))
        else:
            texts.append(f"{a}/{step}")
            values.update(range(a, hi + 1, step))
    return ",".join(texts), frozenset(values)


@st.composite
def hour_fields(draw: st.DrawFn, mode: str) -> tuple[str, frozenset[int]]:
    if mode == "daily":
        return "0", frozenset({0})
    if mode == "near":  # every hour (interval-like) or all but one (fixed-time, yet near DST)
        kind = draw(st.sampled_from(["all", "all-but-one", "random"]))
        if kind == "all":
            return draw(st.sampled_from(["*", "0-23", "*/1"])), frozenset(range(24))
        if kind == "all-but-one":
            skip = draw(st.integers(0, 23))
            hours = [h for h in range(24) if h != skip]
            return ",".join(map(str, hours)), frozenset(hours)
    return draw(numeric(0, 23, star=0.5))


@st.composite
def dom_fields(draw: st.DrawFn, star: float) -> tuple[str, tuple[str, ...], bool]:
    if draw(st.floats(0, 1)) < star:
        return draw(st.sampled_from(["*", "?"])), (), True
    day = st.sampled_from([1, 2, 14, 15, 28, 29, 30, 31]) | st.integers(1, 31)
    item = st.one_of(day.map(str), st.just("L"), st.just("LW"), day.map(lambda n: f"{n}W"))
    items = draw(st.lists(item, min_size=1, max_size=3))
    return ",".join(items), tuple(items), False


@st.composite
def dow_fields(draw: st.DrawFn, star: float) -> tuple[str, tuple[str, ...], bool]:
    if draw(st.floats(0, 1)) < star:
        return draw(st.sampled_from(["*", "?"])), (), True
    texts, canon = [], []
    for _ in range(draw(st.integers(1, 3))):
        wd = draw(st.integers(0, 7))
        name = DAYS[wd % 7] if draw(st.booleans()) else str(wd)
        kind = draw(st.sampled_from(["one", "last", "nth", "range"]))
        if kind == "one":
            texts.append(name)
            canon.append(str(wd % 7))
        elif kind == "last":
            texts.append(f"{name}L")
            canon.append(f"{wd % 7}L")
        elif kind == "nth":
            k = draw(st.integers(1, 5))
            texts.append(f"{name}#{k}")
            canon.append(f"{wd % 7}#{k}")
        else:
            end = draw(st.integers(wd, 7))
            texts.append(f"{wd}-{end}")
            canon.extend(str(x % 7) for x in range(wd, end + 1))
    return ",".join(texts), tuple(canon), False


@st.composite
def expressions(draw: st.DrawFn, mode: str = "general", with_seconds: bool = False) -> Model:
    """``general``; ``near`` (DST-focused: mostly every day, hours covering the changes);
    ``daily`` (fires at midnight, day fields stressed)."""
    seconds = draw(numeric(0, 59, star=0.3)) if with_seconds else ("0", frozenset({0}))
    minutes = ("0", frozenset({0})) if mode == "daily" else draw(numeric(0, 59, star=0.2))
    hours = draw(hour_fields(mode))
    months = draw(numeric(1, 12, MONTHS, star=0.8))
    day_star = {"general": 0.5, "near": 0.85, "daily": 0.2}[mode]
    dom_text, dom_items, dom_star = draw(dom_fields(day_star))
    dow_text, dow_items, dow_star = draw(dow_fields(day_star))
    fields = [minutes[0], hours[0], dom_text, months[0], dow_text]
    if with_seconds:
        fields.insert(0, seconds[0])
    return Model(
        text=" ".join(fields),
        seconds=seconds[1],
        minutes=minutes[1],
        hours=hours[1],
        months=months[1],
        dom_star=dom_star,
        dom=dom_items,
        dow_star=dow_star,
        dow=dow_items,
    )


def possible(model: Model) -> bool:
    try:
        validate_cron(model.text)
    except ValidationError as exc:
        assert "can never fire" in str(exc)
        return False
    return True


def brute_force(model: Model, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Fire times in [start, end] under the documented DST policy, minute by minute.

    Interval-like (all 24 hours): fire at every instant whose local wall time matches.
    Fixed-time: each matching wall time fires at the first instant whose wall time reaches it.
    """
    zone = ZoneInfo(tz)
    interval = model.hours == frozenset(range(24))
    out = []
    t = start
    seen = (start - MINUTE).astimezone(zone).replace(tzinfo=None)  # latest wall time so far
    while t <= end:
        wall = t.astimezone(zone).replace(tzinfo=None)
        if interval:
            if model.matches(wall):
                out.append(t)
        elif wall > seen:
            w, hit = seen + MINUTE, False
            while w <= wall and not hit:
                hit = model.matches(w)
                w += MINUTE
            if hit:
                out.append(t)
        seen = max(seen, wall)
        t += MINUTE
    return out


@st.composite
def instants(draw: st.DrawFn, tz: str, near: bool) -> datetime:
    """Instants in 2026; with ``near``, within hours of one of the zone's transitions."""
    micro = timedelta(microseconds=draw(st.integers(0, 999_999) | st.just(0)))
    if near:
        base = draw(st.sampled_from(transitions(tz, 2026)))
        spread = draw(st.sampled_from([5400, 3 * 3600]))
        return base + timedelta(seconds=draw(st.integers(-spread, spread))) + micro
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=draw(st.integers(0, 364 * 86400))) + micro


@st.composite
def cases(draw: st.DrawFn, near: bool = False) -> tuple[Model, str, datetime]:
    tz = draw(st.sampled_from([z for z in ZONES if transitions(z, 2026)] if near else ZONES))
    model = draw(expressions("near" if near else "general"))
    return model, tz, draw(instants(tz, near))


PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_against_brute_force(model: Model, tz: str, after: datetime, hours: int) -> None:
    """Every fire time in a window after ``after`` equals the brute force's."""
    assume(possible(model))
    first = next_after(model.text, tz, after)
    assert first > after
    assert first.tzinfo is UTC
    lead = after.replace(second=0, microsecond=0)  # minute-aligned, not after 'after'
    window_end = lead + timedelta(hours=hours)
    # start early enough to have seen the first pass of any repeated hour
    found = brute_force(model, tz, lead - timedelta(hours=3), window_end)
    expected = [t for t in found if t > after]
    got = occurrences_between(model.text, tz, after, window_end, 100_000)
    assert got == expected, (model.text, tz, after.isoformat())
    if not expected:
        assert first > window_end


@PROPS
@given(expressions("daily"), st.integers(2024, 2103))
def test_days_over_a_year_match_brute_force(model: Model, year: int) -> None:
    assume(possible(model))
    start = datetime(year, 1, 1, tzinfo=UTC) - timedelta(seconds=1)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) - timedelta(seconds=1)
    got = occurrences_between(model.text, "UTC", start, end, 400)
    days = [date(year, 1, 1) + timedelta(days=i) for i in range(366)]
    expected = [
        datetime(d.year, d.month, d.day, tzinfo=UTC)
        for d in days
        if d.year == year and d.month in model.months and model.day_ok(d)
    ]
    assert got == expected, model.text


@PROPS
@given(cases())
def test_matches_brute_force(case: tuple[Model, str, datetime]) -> None:
    check_against_brute_force(*case, hours=30)


@settings(PROPS, max_examples=200)
@given(cases(near=True))
def test_matches_brute_force_near_transitions(case: tuple[Model, str, datetime]) -> None:
    check_against_brute_force(*case, hours=6)


@PROPS
@given(expressions(with_seconds=True), st.integers(0, 364 * 86400))
def test_seconds_match_brute_force_in_utc(model: Model, offset: int) -> None:
    assume(possible(model))
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=offset, microseconds=500)
    got = next_after(model.text, "UTC", after)
    t = after.replace(microsecond=0) + timedelta(seconds=1)
    for _ in range(3600):
        if model.matches(t.replace(tzinfo=None)):
            assert got == t
            return
        t += timedelta(seconds=1)
    assert got >= t


@PROPS
@given(cases(), st.integers(0, 3 * 86400))
def test_monotonic_and_nothing_skipped(case: tuple[Model, str, datetime], gap: int) -> None:
    model, tz, after = case
    assume(possible(model))
    later = after + timedelta(seconds=gap)
    first, second = next_after(model.text, tz, after), next_after(model.text, tz, later)
    assert first <= second
    # the fire time is a fixed point: asking from just before it gives it back
    assert next_after(model.text, tz, first - timedelta(microseconds=1)) == first
    # and no fire lies strictly between 'after' and the answer
    if later < first:
        assert second == first


@PROPS
@given(cases())
def test_result_matches_in_local_time(case: tuple[Model, str, datetime]) -> None:
    model, tz, after = case
    assume(possible(model))
    got = next_after(model.text, tz, after)
    wall = got.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    if model.matches(wall):
        return
    # otherwise it must be the end of a spring-forward gap holding a matching wall time
    before = (got - timedelta(seconds=1)).astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    assert wall - before > timedelta(seconds=1), (model.text, tz, got.isoformat())
    skipped = before + MINUTE - timedelta(seconds=before.second)
    assert any(model.matches(skipped + i * MINUTE) for i in range((wall - skipped) // MINUTE)), (
        model.text,
        tz,
        got.isoformat(),
    )


def test_brute_force_self_check() -> None:
    # the reference agrees with hand-checked DST answers, so the properties test something
    model = Model("30 1 * * *", frozenset({0}), frozenset({30}), frozenset({1}),
                  frozenset(range(1, 13)), True, (), True, ())  # fmt: skip
    start = at(NY, 2026, 11, 1, 0, 0).astimezone(UTC)
    got = brute_force(model, NY, start, start + timedelta(hours=4))
    assert [t.isoformat() for t in got] == ["2026-11-01T05:30:00+00:00"]
