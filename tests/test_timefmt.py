"""The two timestamp formats (``timefmt``): exactly what ``Date.toISOString()`` and SQLite's
``datetime('now')`` write, for any aware or naive time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from carapace.timefmt import iso, parse_ts, sqlite_ts

CASES = [
    datetime(2026, 12, 6, 21, 41, 51, 490_999, tzinfo=UTC),  # milliseconds cut, not rounded
    datetime(2026, 1, 2, 3, 4, 5, 0, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 6, 1, 1, 30, 0, 5_000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 6, 1, 12, 0, 0, 123_456),  # naive: taken as UTC
    datetime(999, 3, 4, 5, 6, 7, 8_000, tzinfo=UTC),  # toISOString keeps four year digits
]


def _reference(when: datetime) -> tuple[str, str]:
    w = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    date = f"{w.year:04d}-{w.month:02d}-{w.day:02d}"
    clock = f"{w.hour:02d}:{w.minute:02d}:{w.second:02d}"
    return f"{date}T{clock}.{w.microsecond // 1000:03d}Z", f"{date} {clock}"


@pytest.mark.parametrize("when", CASES, ids=str)
def test_formats_equal_the_reference(when: datetime) -> None:
    want_iso, want_sqlite = _reference(when)
    assert iso(when) == want_iso
    assert sqlite_ts(when) == want_sqlite
    assert parse_ts(iso(when)) == parse_ts(want_iso)


def test_now_has_the_formats_shape() -> None:
    now = iso()
    assert len(now) == 24 and now.endswith("Z") and now[10] == "T"
    assert len(sqlite_ts()) == 19
