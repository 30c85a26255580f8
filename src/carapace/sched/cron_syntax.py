"""The cron grammar (see ``carapace.sched.cron`` for the syntax accepted): macros, field
ranges and names, list/range/step items, the day-of-month and day-of-week specials (``L``,
``W``, ``#``), and ``parse_fields`` turning an expression into the sets ``CronSpec`` holds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from carapace.errors import ValidationError

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
MONTH_LENGTHS = {
    m: (28, 29) if m == 2 else (30,) if m in (4, 6, 9, 11) else (31,) for m in range(1, 13)
}


def days_key(length: int, first_weekday: int) -> int:
    """Index into ``CronSpec.days`` for a month of ``length`` days starting on a weekday."""
    return (length - 28) * 7 + first_weekday


def parse_fields(
    expr: str,
) -> tuple[
    tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]
]:
    """``(seconds, minutes, hours, months, days)`` of a valid expression; ``days`` is indexed
    by ``days_key``. Raises ``ValidationError`` naming the field and the problem."""
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
    if not any(days[days_key(n, w)] for m in months for n in MONTH_LENGTHS[m] for w in range(7)):
        raise ValidationError(
            f"cron expression {expr!r} can never fire: day-of-month {parts[3]!r} and "
            f"day-of-week {parts[5]!r} match no day in month {parts[4]!r}"
        )
    return (
        tuple(sorted(sets[0])),
        tuple(sorted(sets[1])),
        tuple(sorted(sets[2])),
        months,
        days,
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
