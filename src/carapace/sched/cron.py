"""Cron expressions: parse once, then compute fire times in an IANA time zone.

``parse_cron(expr) -> CronSpec``, ``next_after(expr, tz, after)``, ``occurrences_between(...)``,
``validate_cron(expr)``, ``validate_timezone(name)``. Fire times are aware UTC datetimes;
nothing here reads the clock.

Syntax: what npm ``cron-parser`` 5 (NanoClaw) accepts, plus ``W`` and ``@midnight``.
* 5 fields ``minute hour day-of-month month day-of-week``, or 6 with a leading ``second``.
* ``*``, ``n``, lists ``1,5``, ranges ``1-10``, steps ``*/5``, ``1-10/2``, ``5/15`` (= 5-max/15);
  names ``JAN``-``DEC`` and ``SUN``-``SAT`` in any case; day-of-week 0-7 (0 and 7 = Sunday);
  ``?`` = ``*`` in the two day fields.
* Day-of-month: ``L`` (last day), ``15W`` (weekday nearest the 15th, within the month), ``LW``.
  Day-of-week: ``5L`` (last Friday), ``1#2`` (second Monday). All may be list items.
* ``@yearly @annually @monthly @weekly @daily @midnight @hourly``, and cron-parser's
  ``@minutely @secondly @weekdays @weekends``.
* Days: when day-of-month and day-of-week are both restricted a day matches if *either*
  does (``0 0 1 * 1`` = the 1st and every Monday); a field is unrestricted only when it is
  exactly ``*`` or ``?`` (as in cron-parser, ``*/2`` restricts).
* Rejected with a clear error: ``H``, ``L-3``, ``L`` alone in day-of-week, ``W``/``#``/``L``
  in ranges or steps, ``@reboot``, and expressions that can never fire (``0 0 30 2 *``).
* Unlike cron-parser: ``#`` is an ordinary day-of-week item (cron-parser filters all days by
  it), duplicates are allowed, names are valid only in their own field.

DST policy. The expression is evaluated in the zone's wall time. *Fixed-time* jobs (the hour
field does not cover all 24 hours) fire once per matching wall time: a wall time skipped by a
spring-forward gap fires at the first instant after the gap (New York 2026-03-08: 02:30 fires
at 03:00 EDT; several skipped times collapse into that one fire), and a wall time repeated by
a fall-back fires at its first (``fold=0``) occurrence only. *Interval-like* jobs (all 24 hours:
``*/15 * * * *``, ``30 * * * *``) follow real time: they fire at every instant whose wall time
matches, so in both passes of a repeated hour and never for wall times inside a gap
(``30 * * * *``: 01:30 EST, then 03:30 EDT an hour later). This is Vixie cron's rule for
wildcard jobs; 30-minute shifts (Australia/Lord_Howe) and midnight changes (America/Santiago)
follow the same rules.
"""

from __future__ import annotations

import calendar
import functools
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carapace.errors import ValidationError
from carapace.sched.cron_syntax import days_key, parse_fields

__all__ = [
    "CronSpec",
    "next_after",
    "occurrences_between",
    "parse_cron",
    "validate_cron",
    "validate_timezone",
]

#: How far ahead a search may go. Expressions that can never fire are rejected by the parser;
#: the rarest possible ones (``0 0 * 2 1#5``: Feb 29 on a Monday) recur within 40 years.
HORIZON_YEARS = 50

_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression; the sorted tuples list the values each field allows.

    ``days`` is a table of matching days of the month, indexed by the month's length (28-31)
    and the weekday of its 1st (0 = Sunday): see ``_days_key``.
    """

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    days: tuple[tuple[int, ...], ...] = field(repr=False)

    @property
    def interval_like(self) -> bool:
        """True when the hour field covers all 24 hours (see the DST policy above)."""
        return len(self.hours) == 24

    def next_after(self, tz: str | ZoneInfo, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (aware), as an aware UTC datetime."""
        zone = _zone(tz)
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"after must be a timezone-aware datetime, got {after!r}")
        # Via UTC, so a caller's imaginary or mis-folded local time is normalised first.
        local = after.astimezone(UTC).astimezone(zone)
        wall = local.replace(tzinfo=None, microsecond=0, fold=0)
        limit = min(wall.year + HORIZON_YEARS, 9999)
        try:
            return self._next_instant(zone, local, wall, after, limit)
        except OverflowError:
            raise self._no_fire(after) from None

    def iter_after(self, tz: str | ZoneInfo, after: datetime) -> Iterator[datetime]:
        """Every fire time after ``after``, in order (an endless generator)."""
        zone = _zone(tz)
        while True:
            after = self.next_after(zone, after)
            yield after

    def occurrences_between(
        self, tz: str | ZoneInfo, start_exclusive: datetime, end_inclusive: datetime, limit: int
    ) -> list[datetime]:
        """The first ``limit`` fire times in ``(start_exclusive, end_inclusive]``, in order."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        out: list[datetime] = []
        if limit == 0 or end_inclusive <= start_exclusive:
            return out
        for when in self.iter_after(tz, start_exclusive):
            if when > end_inclusive:
                break
            out.append(when)
            if len(out) >= limit:
                break
        return out

    # -- search ---------------------------------------------------------------------------

    def _next_instant(
        self, zone: ZoneInfo, local: datetime, wall: datetime, after: datetime, limit: int
    ) -> datetime:
        off0, off1 = _offsets(zone, wall)
        if off0 <= off1:  # ``wall`` happens once: the next matching wall time comes next
            return self._resolve(zone, wall + _SECOND, after, limit)
        # ``wall`` is repeated by a fall-back: the overlap is [first, end) in wall time.
        shift = _transition(zone, _utc(wall, off0), _utc(wall, off1))
        first, end = (shift + off1).replace(tzinfo=None), (shift + off0).replace(tzinfo=None)
        nxt = self._wall_at_or_after(wall + _SECOND, limit)
        if nxt < end:
            if local.fold == 0:
                return _utc(nxt, off0)  # still in the first pass
            if self.interval_like:
                return _utc(nxt, off1)  # second pass, interval-like jobs fire again
        elif local.fold == 0 and self.interval_like:
            again = self._wall_at_or_after(first, limit)
            if again < end:
                return _utc(again, off1)  # the first fire of the second pass
        return self._resolve(zone, max(nxt, end), after, limit)

    def _resolve(self, zone: ZoneInfo, start: datetime, after: datetime, limit: int) -> datetime:
        """Map matching wall times from ``start`` on to instants; the first one past ``after``."""
        wall = self._wall_at_or_after(start, limit)
        while True:
            off0, off1 = _offsets(zone, wall)
            if off0 >= off1:  # exists (the first occurrence if repeated)
                when = _utc(wall, off0)
            else:  # skipped by a spring-forward gap
                when = _transition(zone, _utc(wall, off1), _utc(wall, off0))
                if self.interval_like:  # real time never shows this wall time: skip the gap
                    wall = self._wall_at_or_after((when + off1).replace(tzinfo=None), limit)
                    continue
            if when > after:
                return when
            wall = self._wall_at_or_after(wall + _SECOND, limit)

    def _wall_at_or_after(self, start: datetime, limit: int) -> datetime:
        """The first naive wall time >= ``start`` (whole seconds) that the fields match."""
        year, month = start.year, start.month
        day, hour, minute, second = start.day, start.hour, start.minute, start.second
        months = self.months
        while year <= limit:
            if month not in months:
                i = bisect_left(months, month)
                year, month = (year, months[i]) if i < len(months) else (year + 1, months[0])
                day, hour, minute, second = 1, 0, 0, 0
                continue
            first_weekday, length = calendar.monthrange(year, month)
            days = self.days[days_key(length, (first_weekday + 1) % 7)]
            for d in days[bisect_left(days, day) :]:
                if d > day:
                    hour, minute, second = 0, 0, 0
                hms = self._time_at_or_after(hour, minute, second)
                if hms is not None:
                    return datetime(year, month, d, *hms)
            year, month = (year, month + 1) if month < 12 else (year + 1, 1)
            day, hour, minute, second = 1, 0, 0, 0
        raise self._no_fire(start)

    def _time_at_or_after(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        mins, secs = self.minutes, self.seconds
        for h in self.hours[bisect_left(self.hours, hour) :]:
            if h > hour:
                return h, mins[0], secs[0]
            for m in mins[bisect_left(mins, minute) :]:
                if m > minute:
                    return h, m, secs[0]
                i = bisect_left(secs, second)
                if i < len(secs):
                    return h, m, secs[i]
        return None

    def _no_fire(self, after: datetime) -> ValidationError:
        return ValidationError(
            f"cron expression {self.expression!r} has no fire time within "
            f"{HORIZON_YEARS} years after {after.isoformat()} (or before year 9999)"
        )


# -- time zone helpers --------------------------------------------------------------------


def _offsets(zone: ZoneInfo, wall: datetime) -> tuple[timedelta, timedelta]:
    """UTC offsets of a naive wall time with fold 0 and 1: equal unless repeated or skipped.

    PEP 495: repeated -> off0 > off1 (earlier pass first); skipped -> off0 < off1.
    """
    return _offset(wall.replace(tzinfo=zone, fold=0)), _offset(wall.replace(tzinfo=zone, fold=1))


def _offset(when: datetime) -> timedelta:
    off = when.utcoffset()
    if off is None:  # pragma: no cover - ZoneInfo always answers
        raise ValueError(f"no UTC offset for {when!r}")
    return off


def _utc(wall: datetime, offset: timedelta) -> datetime:
    return (wall - offset).replace(tzinfo=UTC)


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant (whole second) in ``(before, after]`` where the zone's UTC offset changes."""
    lo, hi = int(before.timestamp()), int(after.timestamp())
    old = _offset(datetime.fromtimestamp(lo, zone))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(datetime.fromtimestamp(mid, zone)) == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _zone(tz: str | ZoneInfo) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else validate_timezone(tz)


def validate_timezone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA zone name; ``ValidationError`` if there is none."""
    hint = "expected an IANA time zone name such as 'Europe/London' or 'UTC'"
    if not isinstance(name, str) or name in ("", "localtime", "posixrules"):
        raise ValidationError(f"unknown time zone {name!r}: {hint}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(f"unknown time zone {name!r}: {hint}") from None


# -- parsing ------------------------------------------------------------------------------


def validate_cron(expr: str) -> None:
    """Raise ``ValidationError`` naming the field and the problem if ``expr`` is not valid."""
    parse_cron(expr)


def parse_cron(expr: str) -> CronSpec:
    """Parse a cron expression (see the module docstring); ``ValidationError`` if invalid."""
    if not isinstance(expr, str):
        raise ValidationError(f"cron expression must be a string, got {type(expr).__name__}")
    return _parse(expr)


@functools.lru_cache(maxsize=512)
def _parse(expr: str) -> CronSpec:
    seconds, minutes, hours, months, days = parse_fields(expr)
    return CronSpec(
        expression=expr, seconds=seconds, minutes=minutes, hours=hours, months=months, days=days
    )


# -- module-level conveniences --------------------------------------------------------------


def next_after(expr: str, tz: str | ZoneInfo, after: datetime) -> datetime:
    """The first fire time of ``expr`` in zone ``tz`` strictly after ``after``, in UTC."""
    return parse_cron(expr).next_after(tz, after)


def occurrences_between(
    expr: str,
    tz: str | ZoneInfo,
    start_exclusive: datetime,
    end_inclusive: datetime,
    limit: int,
) -> list[datetime]:
    """Up to ``limit`` fire times in ``(start_exclusive, end_inclusive]``, oldest first (UTC)."""
    return parse_cron(expr).occurrences_between(tz, start_exclusive, end_inclusive, limit)
