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
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carapace.errors import ValidationError

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

MACROS: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@minutely": "* * * * *",
    "@secondly": "* * * * * *",
    "@weekdays": "0 0 * * 1-5",
    "@weekends": "0 0 * * 0,6",
}

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NAMES = {name: i for i, name in enumerate(_MONTHS, 1)}
_DAY_NAMES = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_NO_NAMES: Mapping[str, int] = {}
# (name, low, high, names) for second, minute, hour, day-of-month, month, day-of-week.
_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("second", 0, 59, _NO_NAMES),
    ("minute", 0, 59, _NO_NAMES),
    ("hour", 0, 23, _NO_NAMES),
    ("day-of-month", 1, 31, _NO_NAMES),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DAY_NAMES),
)
_ITEM = re.compile(r"(?:([*?])|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?")
_DOM_NEAREST = re.compile(r"([0-9]+)W")
_DOW_LAST = re.compile(r"([0-9]+|[A-Z]{3})L", re.IGNORECASE)
_DOW_NTH = re.compile(r"([0-9]+|[A-Z]{3})#([0-9]+)", re.IGNORECASE)
_MONTH_LENGTHS = {
    m: (28, 29) if m == 2 else (30,) if m in (4, 6, 9, 11) else (31,) for m in range(1, 13)
}
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
            days = self.days[_days_key(length, (first_weekday + 1) % 7)]
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


def _days_key(length: int, first_weekday: int) -> int:
    """Index into ``CronSpec.days`` for a month of ``length`` days starting on a weekday."""
    return (length - 28) * 7 + first_weekday


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
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            known = " ".join(sorted(MACROS))
            raise ValidationError(f"unknown cron macro {text!r}: expected one of {known}")
        text = MACROS[text.lower()]
    parts = text.split(" ") if text else []
    if len(parts) not in (5, 6):
        raise ValidationError(
            f"invalid cron expression {expr!r}: expected 5 fields (minute hour day-of-month "
            f"month day-of-week) or 6 with a leading second, got {len(parts)}"
        )
    if len(parts) == 5:
        parts.insert(0, "0")
    sets = [
        {v for item in _items(expr, i, parts[i]) for v in _parse_item(expr, i, parts[i], item)}
        for i in (0, 1, 2, 4)
    ]
    dom = _DayOfMonth.parse(expr, parts[3])
    dow = _DayOfWeek.parse(expr, parts[5])
    days = tuple(
        _match_days(dom, dow, length, weekday) for length in range(28, 32) for weekday in range(7)
    )
    months = tuple(sorted(sets[3]))
    if not any(days[_days_key(n, w)] for m in months for n in _MONTH_LENGTHS[m] for w in range(7)):
        raise ValidationError(
            f"cron expression {expr!r} can never fire: day-of-month {parts[3]!r} and "
            f"day-of-week {parts[5]!r} match no day in month {parts[4]!r}"
        )
    return CronSpec(
        expression=expr,
        seconds=tuple(sorted(sets[0])),
        minutes=tuple(sorted(sets[1])),
        hours=tuple(sorted(sets[2])),
        months=months,
        days=days,
    )


def _field_error(expr: str, index: int, raw: str, problem: str) -> ValidationError:
    return ValidationError(
        f"invalid cron expression {expr!r}: {_FIELDS[index][0]} field {raw!r}: {problem}"
    )


def _items(expr: str, index: int, raw: str) -> list[str]:
    items = raw.split(",")
    if "" in items:
        raise _field_error(expr, index, raw, "empty item in list")
    return items


def _parse_item(expr: str, index: int, raw: str, item: str) -> range:
    """``*``, ``n``, ``a-b``, with an optional ``/step``; ``a/step`` means ``a-<max>/step``."""
    name, low, high, _ = _FIELDS[index]
    m = _ITEM.fullmatch(item)
    if (
        m is None
        or _unsupported(index, item)
        or (m.group(1) == "?" and name not in ("day-of-month", "day-of-week"))
    ):
        raise _field_error(expr, index, raw, _hint(index, item))
    star, first, last, step = m.groups()
    if star:
        start, stop = low, high
    else:
        start = _value(expr, index, raw, first)
        stop = _value(expr, index, raw, last) if last else high if step else start
        if start > stop:
            raise _field_error(
                expr, index, raw, f"range {item!r} runs backwards ({start} > {stop})"
            )
    every = int(step) if step else 1
    if every < 1:
        raise _field_error(expr, index, raw, f"step in {item!r} must be at least 1")
    return range(start, stop + 1, every)


def _value(expr: str, index: int, raw: str, token: str) -> int:
    _, low, high, names = _FIELDS[index]
    if token.isdigit():
        value = int(token)
    elif token.upper() in names:
        value = names[token.upper()]
    else:
        raise _field_error(expr, index, raw, _hint(index, token))
    if not low <= value <= high:
        raise _field_error(expr, index, raw, f"{value} is out of range {low}-{high}")
    return value


def _unsupported(index: int, item: str) -> str | None:
    upper = item.upper()
    if upper == "H" or upper.startswith(("H/", "H(")):
        return "'H' (hashed values) is not supported"
    if index == 3 and upper.startswith("L-"):
        return "'L-<n>' (days before the last) is not supported"
    return None


def _hint(index: int, item: str) -> str:
    name, low, high, names = _FIELDS[index]
    unsupported = _unsupported(index, item)
    if unsupported:
        return unsupported
    accepted = "*, n, a-b, */n, a-b/n, a/n"
    if name == "day-of-month":
        accepted += ", ?, L, nW, LW"
    elif name == "day-of-week":
        accepted += ", ?, nL, n#k, names SUN-SAT (L alone is not supported)"
    elif names:
        accepted += ", names JAN-DEC"
    return f"cannot parse {item!r} (accepted: {accepted}; values {low}-{high})"


@dataclass(frozen=True)
class _DayOfMonth:
    star: bool
    days: frozenset[int]
    last: bool  # L
    last_weekday: bool  # LW
    nearest: frozenset[int]  # nW

    @staticmethod
    def parse(expr: str, raw: str) -> _DayOfMonth:
        days: set[int] = set()
        nearest: set[int] = set()
        last = last_weekday = False
        for item in _items(expr, 3, raw):
            upper = item.upper()
            if upper == "L":
                last = True
            elif upper == "LW":
                last_weekday = True
            elif m := _DOM_NEAREST.fullmatch(upper):
                nearest.add(_value(expr, 3, raw, m.group(1)))
            else:
                days.update(_parse_item(expr, 3, raw, item))
        star = raw in ("*", "?")
        return _DayOfMonth(star, frozenset(days), last, last_weekday, frozenset(nearest))


@dataclass(frozen=True)
class _DayOfWeek:
    star: bool
    weekdays: frozenset[int]  # 0 = Sunday
    last: frozenset[int]  # nL: the last such weekday of the month
    nth: frozenset[tuple[int, int]]  # n#k: (weekday, k)

    @staticmethod
    def parse(expr: str, raw: str) -> _DayOfWeek:
        weekdays: set[int] = set()
        last: set[int] = set()
        nth: set[tuple[int, int]] = set()
        for item in _items(expr, 5, raw):
            if m := _DOW_LAST.fullmatch(item):
                last.add(_value(expr, 5, raw, m.group(1)) % 7)
            elif m := _DOW_NTH.fullmatch(item):
                k = int(m.group(2))
                if not 1 <= k <= 5:
                    raise _field_error(expr, 5, raw, f"{item!r}: occurrence after # must be 1-5")
                nth.add((_value(expr, 5, raw, m.group(1)) % 7, k))
            else:
                weekdays.update(v % 7 for v in _parse_item(expr, 5, raw, item))
        star = raw in ("*", "?")
        return _DayOfWeek(star, frozenset(weekdays), frozenset(last), frozenset(nth))


def _match_days(dom: _DayOfMonth, dow: _DayOfWeek, length: int, first: int) -> tuple[int, ...]:
    """Days of a ``length``-day month whose 1st falls on weekday ``first`` that match."""

    def weekday(d: int) -> int:
        return (first + d - 1) % 7

    def weekday_near(d: int) -> int:  # W: nearest Monday-Friday, staying in the month
        wd = weekday(d)
        if wd == 6:  # Saturday -> Friday, or Monday the 3rd if the 1st is a Saturday
            return d - 1 if d > 1 else d + 2
        if wd == 0:  # Sunday -> Monday, or Friday if Sunday is the last day
            return d + 1 if d < length else d - 2
        return d

    by_dom = {d for d in dom.days if d <= length}
    by_dom |= {weekday_near(d) for d in dom.nearest if d <= length}
    if dom.last:
        by_dom.add(length)
    if dom.last_weekday:
        by_dom.add(weekday_near(length))
    by_dow = {
        d
        for d in range(1, length + 1)
        if weekday(d) in dow.weekdays
        or (weekday(d) in dow.last and d + 7 > length)
        or (weekday(d), (d - 1) // 7 + 1) in dow.nth
    }
    if dom.star:
        return tuple(range(1, length + 1)) if dow.star else tuple(sorted(by_dow))
    return tuple(sorted(by_dom if dow.star else by_dom | by_dow))


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
