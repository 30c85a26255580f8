"""Clocks, timestamp formats and id formats shared with NanoClaw (spec/host.md §2.9, App. A).

Two timestamp formats coexist in NanoClaw's files and carapace keeps both:

* ``now_iso`` — JavaScript ``Date.toISOString()``: ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
* ``sqlite_now`` — SQLite ``datetime('now')``: ``YYYY-MM-DD HH:MM:SS`` (UTC, no marker).

Every function takes the time it needs; only outer loops read the clock.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # a protocol is read by type checkers only


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real wall clock (UTC, aware)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock for tests: it moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        from datetime import timedelta

        self._now = self._now + timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def iso(when: datetime | None = None) -> str:
    """``Date.toISOString()`` format: millisecond precision, ``Z``."""
    # (isoformat, not strftime: a third of the time, and a year below 1000 keeps its four
    # digits as toISOString's; an aware UTC time ends in "+00:00")
    return to_utc(when or utcnow()).isoformat(timespec="milliseconds")[:-6] + "Z"


def sqlite_ts(when: datetime | None = None) -> str:
    """SQLite ``datetime('now')`` format: ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return to_utc(when or utcnow()).isoformat(" ", "seconds")[:-6]


def parse_ts(text: str) -> datetime:
    """Parse either format (or any ISO 8601 string); a value with no zone is UTC."""
    s = text.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    return to_utc(dt)


def epoch_ms(when: datetime | None = None) -> int:
    return int(to_utc(when or utcnow()).timestamp() * 1000)


def rand6() -> str:
    """Six uniform base-36 characters from ``os.urandom`` (what ``secrets`` uses; bytes
    of 252 and above are drawn again so that each character is equally likely). Not
    ``secrets`` itself: it loads OpenSSL's hashes, a tenth of a runner's import time."""
    out: list[str] = []
    while len(out) < 6:
        out += [_B36[b % 36] for b in os.urandom(8) if b < 252]
    return "".join(out[:6])


def new_id(prefix: str, when: datetime | None = None) -> str:
    """``<prefix>-<epoch ms>-<rand6>``, NanoClaw's generated id format."""
    ms = epoch_ms(when) if when is not None else int(time.time() * 1000)
    return f"{prefix}-{ms}-{rand6()}"
