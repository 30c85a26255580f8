"""Task series: the next occurrence, catch-up after downtime, and whole-series operations.

A recurring task is a *series* of ``messages_in`` rows (``kind='task'``) sharing a
``series_id`` (the first occurrence's id). Exactly one live row of a series carries the
``recurrence``: the *head*, the next occurrence not handed over yet. When the head comes
due, ``advance_series`` hands it over in one inbound transaction:

* the head's ``recurrence`` is cleared (it is now a plain one-off row the runner claims);
* the next head is inserted, ``process_after`` = the next occurrence after the *scheduled*
  time (not after "now": no drift, no skipped slots), with the deterministic id
  ``<series_id>@<scheduled ISO>`` so a re-run of the step inserts nothing twice;
* occurrences that passed while the host was down (more than ``MISSED_GRACE_S`` late and
  not claimed) follow the task's catch-up policy: ``skip`` (default) runs none of them,
  ``latest`` runs the most recent one, ``all`` runs the most recent ``CATCH_UP_ALL_MAX``.
  Every occurrence not run is reported as missed (recorded in ``carapace_task_runs``).

Because the next head exists from the moment the current occurrence is handed over, a
failed occurrence (agent failure or try limit) never ends the series.

``recurrence`` is a cron expression (``carapace.sched.cron``, read in the task's time zone)
or ``@every <N>s`` (an interval: next = scheduled + N s, phase kept), as the v1 importer
writes it. The task's zone and catch-up policy live in the row's content JSON next to
NanoClaw's ``prompt``/``script``: ``{"prompt", "script", "timezone", "catchUp"}``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from carapace.db.connection import transaction
from carapace.db.session import insert_message_in
from carapace.errors import ValidationError
from carapace.jsonutil import dumps, loads_or
from carapace.sched import cron
from carapace.timefmt import iso, parse_ts, sqlite_ts

logger = logging.getLogger(__name__)

CatchUp = Literal["skip", "latest", "all"]
CATCH_UP_POLICIES: tuple[CatchUp, ...] = ("skip", "latest", "all")
DEFAULT_CATCH_UP: CatchUp = "skip"
CATCH_UP_ALL_MAX = 10
MISSED_GRACE_S = 60.0
MISSED_RECORD_MAX = 100
COUNT_LIMIT = 5000

_EVERY = re.compile(r"^@every\s+(\d+)\s*s$")
_WINDOWS = (
    timedelta(minutes=2),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=35),
    timedelta(days=400),
    timedelta(days=2000),
)


# -- recurrence ----------------------------------------------------------------------------


def every_seconds(recurrence: str) -> int | None:
    """N for ``@every <N>s``; None for anything else."""
    m = _EVERY.match(recurrence.strip())
    return int(m.group(1)) if m else None


def validate_recurrence(recurrence: str) -> None:
    """A cron expression or ``@every <N>s`` (N ≥ 1); ``ValidationError`` otherwise."""
    if recurrence.strip().startswith("@every"):
        n = every_seconds(recurrence)
        if n is None or n < 1:
            raise ValidationError(f"invalid interval {recurrence!r}: use '@every <seconds>s'")
        return
    cron.validate_cron(recurrence)


def next_occurrence(recurrence: str, tz: str, scheduled_for: datetime) -> datetime:
    """The occurrence after the one scheduled for ``scheduled_for`` (aware UTC)."""
    n = every_seconds(recurrence)
    if n is not None:
        return parse_ts(iso(scheduled_for)) + timedelta(seconds=max(n, 1))
    return cron.next_after(recurrence, tz, scheduled_for)


def occurrences(
    recurrence: str, tz: str, start_exclusive: datetime, end_inclusive: datetime, limit: int
) -> list[datetime]:
    """Up to ``limit`` occurrences in ``(start_exclusive, end_inclusive]``, oldest first.
    For ``@every`` the grid is anchored at ``start_exclusive``."""
    n = every_seconds(recurrence)
    if n is None:
        return cron.occurrences_between(recurrence, tz, start_exclusive, end_inclusive, limit)
    out: list[datetime] = []
    step = timedelta(seconds=max(n, 1))
    when = start_exclusive + step
    while when <= end_inclusive and len(out) < limit:
        out.append(when)
        when += step
    return out


def first_after(recurrence: str, tz: str, scheduled_for: datetime, now: datetime) -> datetime:
    """The first occurrence of the series through ``scheduled_for`` that is after ``now``."""
    n = every_seconds(recurrence)
    if n is not None:
        step = max(n, 1)
        if scheduled_for > now:
            return scheduled_for
        k = int((now - scheduled_for).total_seconds() // step) + 1
        return scheduled_for + timedelta(seconds=k * step)
    return cron.next_after(recurrence, tz, max(now, scheduled_for))


def _recent(recurrence: str, tz: str, start: datetime, end: datetime, n: int) -> list[datetime]:
    """The most recent ``n`` occurrences in ``(start, end]``, oldest first."""
    if every_seconds(recurrence) is not None:
        step = timedelta(seconds=max(every_seconds(recurrence) or 1, 1))
        k = int((end - start) / step)
        return [start + step * i for i in range(max(1, k - n + 1), k + 1)]
    for window in (*_WINDOWS, None):
        lo = start if window is None or end - window <= start else end - window
        got = occurrences(recurrence, tz, lo, end, COUNT_LIMIT)
        if len(got) >= n or lo == start:
            return got[-n:]
    return []  # pragma: no cover


def occurrence_id(series_id: str, scheduled_for: datetime) -> str:
    return f"{series_id}@{iso(scheduled_for)}"


# -- content -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskContent:
    prompt: str
    script: str | None = None
    timezone: str | None = None
    catch_up: CatchUp = DEFAULT_CATCH_UP
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> TaskContent:
        doc = loads_or(text or "", {})
        doc = doc if isinstance(doc, dict) else {"prompt": str(doc)}
        policy = doc.get("catchUp")
        tz = doc.get("timezone")
        script = doc.get("script")
        return cls(
            prompt=str(doc.get("prompt") or ""),
            script=script if isinstance(script, str) and script else None,
            timezone=tz if isinstance(tz, str) and tz else None,
            catch_up=policy if policy in CATCH_UP_POLICIES else DEFAULT_CATCH_UP,
            extra={
                k: v for k, v in doc.items() if k not in ("prompt", "script", "timezone", "catchUp")
            },
        )

    def to_json(self) -> str:
        doc: dict[str, Any] = {"prompt": self.prompt, "script": self.script}
        if self.timezone:
            doc["timezone"] = self.timezone
        doc["catchUp"] = self.catch_up
        return dumps({**doc, **self.extra})

    def zone(self, default_tz: str) -> str:
        return self.timezone or default_tz


def check_catch_up(value: str | None) -> CatchUp:
    if value is None or value == "":
        return DEFAULT_CATCH_UP
    if value not in CATCH_UP_POLICIES:
        raise ValidationError(f"catch-up policy must be one of skip, latest, all (got {value!r})")
    return value


def task_content_from_action(c: dict[str, Any]) -> TaskContent:
    """The row content for a ``schedule_task`` action; checks recurrence, zone, policy."""
    rec = c.get("recurrence")
    if rec:
        validate_recurrence(str(rec))
    tz = c.get("timezone") or None
    if tz:
        cron.validate_timezone(str(tz))
    script = c.get("script")
    return TaskContent(
        prompt=str(c.get("prompt") or ""),
        script=script if isinstance(script, str) and script else None,
        timezone=str(tz) if tz else None,
        catch_up=check_catch_up(c.get("catchUp")),
    )


def update_fields_from_action(c: dict[str, Any]) -> dict[str, Any]:
    """The fields an ``update_task`` action changes, checked (``null`` clears)."""
    fields: dict[str, Any] = {
        k: c[k]
        for k in ("prompt", "script", "processAfter", "recurrence", "timezone", "catchUp")
        if k in c
    }
    if fields.get("recurrence"):
        validate_recurrence(str(fields["recurrence"]))
    if fields.get("timezone"):
        cron.validate_timezone(str(fields["timezone"]))
    if "catchUp" in fields:
        fields["catchUp"] = check_catch_up(fields["catchUp"])
    if fields.get("processAfter") is not None:
        try:
            fields["processAfter"] = iso(parse_ts(str(fields["processAfter"])))
        except ValueError:
            raise ValidationError(f"invalid processAfter {fields['processAfter']!r}") from None
    return fields


# -- the hand-over step ----------------------------------------------------------------------


@dataclass(frozen=True)
class Missed:
    """An occurrence that was not run (recorded as ``missed``)."""

    series_id: str
    occurrence_id: str
    scheduled_for: datetime
    detail: str | None = None


@dataclass
class Advance:
    missed: list[Missed] = field(default_factory=list)
    caught_up: list[datetime] = field(default_factory=list)
    next_at: datetime | None = None


def _when(row: sqlite3.Row) -> datetime:
    value = row["process_after"] or row["timestamp"]
    return parse_ts(str(value))


def _created(row: sqlite3.Row) -> datetime:
    try:
        return parse_ts(str(row["timestamp"]))
    except (TypeError, ValueError):
        return _when(row)


def _clone(
    row: sqlite3.Row, rid: str, when: datetime, recurrence: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": rid,
        "kind": row["kind"],
        "timestamp": sqlite_ts(now),
        "process_after": iso(when),
        "recurrence": recurrence,
        "series_id": row["series_id"] or row["id"],
        "platform_id": row["platform_id"],
        "channel_type": row["channel_type"],
        "thread_id": row["thread_id"],
        "content": row["content"],
    }


def _insert(inb: sqlite3.Connection, row: dict[str, Any], other_max: int) -> None:
    if inb.execute("SELECT 1 FROM messages_in WHERE id=?", (row["id"],)).fetchone() is None:
        insert_message_in(inb, row, other_max=other_max)


def plan_catch_up(
    policy: CatchUp, due: list[datetime], on_time: list[bool]
) -> tuple[list[datetime], list[datetime]]:
    """Split due occurrences (oldest first) into (run, missed) under ``policy``. Pure."""
    run = [d for d, ok in zip(due, on_time, strict=True) if ok]
    late = [d for d, ok in zip(due, on_time, strict=True) if not ok]
    if policy == "latest" and late and not (run and run[-1] > late[-1]):
        run.append(late.pop())
    elif policy == "all" and late:
        keep = late[-CATCH_UP_ALL_MAX:]
        run.extend(keep)
        late = late[: len(late) - len(keep)]
    return sorted(run), late


def advance_series(
    inb: sqlite3.Connection,
    head: sqlite3.Row,
    *,
    now: datetime,
    default_tz: str,
    claimed: bool = False,
    other_max: int = 0,
    on_missed: Callable[[list[Missed]], None] | None = None,
) -> Advance:
    """Hand over a due head row (see the module docstring); one inbound transaction.
    ``on_missed`` runs inside it, before the commit: if it raises, nothing changes."""
    rec = str(head["recurrence"])
    series = str(head["series_id"] or head["id"])
    content = TaskContent.parse(head["content"]) if head["kind"] == "task" else TaskContent("")
    tz = content.zone(default_tz)
    s0 = _when(head)
    grace = timedelta(seconds=MISSED_GRACE_S)
    created = _created(head)
    # occurrences from before the row existed were never part of the series: not missed
    later = [d for d in _recent(rec, tz, s0, now, MISSED_RECORD_MAX + 1) if d > created]
    due = [s0, *later]
    settled = claimed or head["status"] in ("completed", "failed")
    on_time = [
        (i == 0 and settled) or now - (max(d, created) if i == 0 else d) <= grace
        for i, d in enumerate(due)
    ]
    policy: CatchUp = content.catch_up if head["kind"] == "task" else "latest"
    run, missed = plan_catch_up(policy, due, on_time)
    result = Advance(caught_up=[d for d in run if d != s0])
    truncated = len(later) > MISSED_RECORD_MAX
    if truncated and later:
        earlier = occurrences(rec, tz, s0, later[0] - timedelta(microseconds=1), COUNT_LIMIT)
        if earlier:
            more = "" if len(earlier) < COUNT_LIMIT else "at least "
            result.missed.append(
                Missed(
                    series,
                    f"{series}@missed-before-{iso(later[0])}",
                    earlier[0],
                    f"{more}{len(earlier)} more occurrences "
                    f"missed from {iso(earlier[0])} to {iso(earlier[-1])}",
                )
            )
    for d in missed:
        oid = str(head["id"]) if d == s0 else occurrence_id(series, d)
        result.missed.append(Missed(series, oid, d, f"missed ({policy}): host down"))
    nxt = first_after(rec, tz, s0, now)
    result.next_at = nxt
    with transaction(inb, durable=True):
        if on_missed is not None and result.missed:
            on_missed(result.missed)
        if s0 in missed and head["status"] == "pending":
            inb.execute(
                "UPDATE messages_in SET status='completed', recurrence=NULL WHERE id=?",
                (head["id"],),
            )
        else:
            inb.execute("UPDATE messages_in SET recurrence=NULL WHERE id=?", (head["id"],))
        for d in result.caught_up:
            _insert(inb, _clone(head, occurrence_id(series, d), d, None, now), other_max)
        _insert(inb, _clone(head, occurrence_id(series, nxt), nxt, rec, now), other_max)
    logger.info(
        "series %s: occurrence %s handed over (%d caught up, %d missed); next at %s",
        series,
        head["id"],
        len(result.caught_up),
        len(result.missed),
        iso(nxt),
    )
    return result


# (both read the rows that carry a recurrence through their partial index, db/session.py)
DUE_HEADS_SQL = (
    "SELECT * FROM messages_in WHERE recurrence IS NOT NULL AND recurrence != '' "
    "AND status IN ('pending', 'completed', 'failed') ORDER BY seq"
)
NEXT_HEAD_SQL = (
    "SELECT MIN(process_after) FROM messages_in WHERE recurrence IS NOT NULL "
    "AND recurrence != '' AND status='pending'"
)


def due_heads(inb: sqlite3.Connection, now: datetime) -> list[sqlite3.Row]:
    """Rows still carrying a recurrence whose time has come (pending) or that ended."""
    rows = inb.execute(DUE_HEADS_SQL).fetchall()
    out = []
    for r in rows:
        try:
            when = _when(r)
        except (TypeError, ValueError):
            continue
        if r["status"] != "pending" or when <= now:
            out.append(r)
    return out


def next_head_due(inb: sqlite3.Connection) -> datetime | None:
    row = inb.execute(NEXT_HEAD_SQL).fetchone()
    try:
        return parse_ts(row[0]) if row and row[0] else None
    except ValueError:
        return None


# -- whole-series operations ------------------------------------------------------------------


def live_rows(inb: sqlite3.Connection, task_id: str, statuses: tuple[str, ...]) -> list[Any]:
    marks = ",".join("?" for _ in statuses)
    return inb.execute(
        f"SELECT * FROM messages_in WHERE kind='task' AND status IN ({marks}) AND "
        f"(id=? OR series_id=? OR series_id=(SELECT series_id FROM messages_in WHERE id=?)) "
        f"ORDER BY seq",
        (*statuses, task_id, task_id, task_id),
    ).fetchall()


def _set(inb: sqlite3.Connection, rows: list[Any], sql_set: str) -> int:
    with transaction(inb, durable=True):
        for r in rows:
            inb.execute(f"UPDATE messages_in SET {sql_set} WHERE id=?", (r["id"],))
    return len(rows)


def cancel_series(inb: sqlite3.Connection, task_id: str, *, now: datetime) -> int:
    """End the series: every live occurrence becomes ``completed`` without recurrence."""
    rows = live_rows(inb, task_id, ("pending", "paused"))
    return _set(inb, rows, "status='completed', recurrence=NULL")


def pause_series(inb: sqlite3.Connection, task_id: str, *, now: datetime) -> int:
    return _set(inb, live_rows(inb, task_id, ("pending",)), "status='paused'")


def resume_series(inb: sqlite3.Connection, task_id: str, *, now: datetime, default_tz: str) -> int:
    """Pending again. A head whose time passed while paused moves to its next occurrence
    after ``now`` (occurrences during a pause are not run and not "missed")."""
    rows = live_rows(inb, task_id, ("paused",))
    with transaction(inb, durable=True):
        for r in rows:
            sets, args = "status='pending'", []
            rec = r["recurrence"]
            if rec and _when(r) <= now:
                tz = TaskContent.parse(r["content"]).zone(default_tz)
                sets += ", process_after=?"
                args.append(iso(first_after(rec, tz, _when(r), now)))
            inb.execute(f"UPDATE messages_in SET {sets} WHERE id=?", (*args, r["id"]))
    return len(rows)


def update_series(
    inb: sqlite3.Connection,
    task_id: str,
    fields: dict[str, Any],
    *,
    now: datetime,
) -> int:
    """Merge ``prompt``/``script``/``timezone``/``catchUp`` into every live occurrence; a
    new ``processAfter``/``recurrence`` applies to the head (the newest live occurrence)."""
    rows = live_rows(inb, task_id, ("pending", "paused"))
    if not rows:
        return 0
    heads = [r for r in rows if r["recurrence"]] or [rows[-1]]
    with transaction(inb, durable=True):
        for r in rows:
            doc = loads_or(r["content"], {})
            doc = doc if isinstance(doc, dict) else {}
            for key in ("prompt", "script", "timezone", "catchUp"):
                if key in fields:
                    doc[key] = fields[key]
            sets: list[str] = ["content=?"]
            args: list[Any] = [dumps(doc)]
            if r in heads and "processAfter" in fields:
                sets.append("process_after=?")
                args.append(fields["processAfter"])
            if r in heads and "recurrence" in fields:
                sets.append("recurrence=?")
                args.append(fields["recurrence"] or None)
            inb.execute(f"UPDATE messages_in SET {', '.join(sets)} WHERE id=?", (*args, r["id"]))
    return len(rows)
