"""Task run history (``carapace_task_runs``) and the sweep hook that drives the series.

``SeriesSweep`` replaces NanoClaw's recurrence step (spec §5.6) as the host's
``hooks.on_sweep_session``: per swept session it hands over every due series head
(``series.advance_series``), records missed occurrences *before* the inbound commit (an
idempotent insert keyed by the occurrence id, so a crash in between loses nothing and a
re-run adds nothing), and copies the outcome of finished occurrences into the history:
``ran`` (runner ack ``completed``), ``failed`` (ack ``failed`` or the host's try limit),
``skipped`` (a pre-task script said not to wake the agent: the runner's
``task_script_result`` action, which wins over ``ran``).
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta
from typing import Any

from carapace.db.session import SessionPaths
from carapace.db.sessions import Session
from carapace.host.outbox_reader import INLINE_BUDGET_S, OutboxRefused, read_acks, read_max_seq
from carapace.host.sweep import SweepContext, earliest
from carapace.jsonutil import dumps
from carapace.sched.series import Missed, advance_series, due_heads, next_head_due
from carapace.timefmt import iso, parse_ts

logger = logging.getLogger(__name__)

HISTORY_WINDOW = timedelta(days=3)
RETRY_BAD_HEAD = timedelta(seconds=60)
SCRIPT_DETAIL_MAX = 2000
Outcome = str  # 'ran' | 'missed' | 'failed' | 'skipped'


def record_run(
    db: sqlite3.Connection,
    *,
    run_id: str,
    series_id: str,
    outcome: Outcome,
    now: datetime,
    agent_group_id: str | None = None,
    session_id: str | None = None,
    scheduled_for: str | None = None,
    run_at: str | None = None,
    duration_ms: int | None = None,
    detail: str | None = None,
    replace: bool = False,
) -> None:
    """One history row; an existing row for ``run_id`` is kept unless ``replace``."""
    conflict = (
        "DO UPDATE SET outcome=excluded.outcome, detail=excluded.detail, "
        "duration_ms=COALESCE(excluded.duration_ms, duration_ms)"
        if replace
        else "DO NOTHING"
    )
    db.execute(
        "INSERT INTO carapace_task_runs (id, series_id, agent_group_id, session_id, "
        "scheduled_for, run_at, outcome, duration_ms, detail, created_at) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) {conflict}",
        (
            run_id,
            series_id,
            agent_group_id,
            session_id,
            scheduled_for,
            run_at or iso(now),
            outcome,
            duration_ms,
            detail,
            iso(now),
        ),
    )


def record_missed(
    db: sqlite3.Connection, session: Session, missed: list[Missed], now: datetime
) -> None:
    for m in missed:
        record_run(
            db,
            run_id=m.occurrence_id,
            series_id=m.series_id,
            outcome="missed",
            now=now,
            agent_group_id=session.agent_group_id,
            session_id=session.id,
            scheduled_for=iso(m.scheduled_for),
            detail=m.detail,
        )


def history(db: sqlite3.Connection, series_id: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT * FROM carapace_task_runs WHERE series_id=? "
        "ORDER BY COALESCE(scheduled_for, run_at) DESC LIMIT ?",
        (series_id, limit),
    ).fetchall()
    return [dict(r) for r in rows]


KnownAcks = tuple[frozenset[str], dict[str, tuple[str, str | None]]]


def _acks(
    paths: SessionPaths, ids: list[str], known: KnownAcks | None = None
) -> dict[str, tuple[str, str | None]]:
    """Acks of ``ids``: from what the sweep read off the event loop (``known``); only ids it
    did not look at are read here, through the defensive outbound reader (empty when
    refused)."""
    found: dict[str, tuple[str, str | None]] = {}
    if known is not None:
        looked, acks = known
        found = {i: acks[i] for i in ids if i in acks}
        ids = [i for i in ids if i not in looked]
    if not ids:
        return found
    try:
        return {**found, **read_acks(paths.outbound, ids, budget_s=INLINE_BUDGET_S)}
    except (OSError, OutboxRefused):
        return found


def sync_outcomes(
    db: sqlite3.Connection,
    session: Session,
    paths: SessionPaths,
    inb: sqlite3.Connection,
    now: datetime,
    prefetched: KnownAcks | None = None,
    done: dict[str, str] | None = None,
) -> int:
    """Record ``ran``/``failed`` for finished task occurrences of the last few days
    (``done``: rows still pending in ``inb`` that the runner's acks say are finished)."""
    since = now - HISTORY_WINDOW
    also = ", 'pending'" if done else ""  # (then only those of the pending rows)
    rows = [
        r
        for r in inb.execute(
            "SELECT id, series_id, status, process_after, timestamp FROM messages_in "
            f"WHERE kind='task' AND status IN ('completed', 'failed'{also})"
        )
        if (r["status"] != "pending" or (done and r["id"] in done)) and _recent_enough(r, since)
    ]
    if not rows:
        return 0
    known: set[str] = set()
    ids = [r["id"] for r in rows]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" for _ in chunk)
        known.update(
            x[0]
            for x in db.execute(f"SELECT id FROM carapace_task_runs WHERE id IN ({marks})", chunk)
        )
    todo = [r for r in rows if r["id"] not in known]
    acks = _acks(paths, [r["id"] for r in todo], prefetched)
    n = 0
    for r in todo:
        ack = acks.get(r["id"])
        if ack is None and r["status"] != "failed":
            continue  # completed without a run: cancelled, or missed (recorded already)
        outcome = "failed" if (ack and ack[0] == "failed") or r["status"] == "failed" else "ran"
        if ack is not None and ack[0] == "processing":
            continue
        run_at = iso(parse_ts(ack[1])) if ack and ack[1] else iso(now)
        record_run(
            db,
            run_id=r["id"],
            series_id=r["series_id"] or r["id"],
            outcome=outcome,
            now=now,
            agent_group_id=session.agent_group_id,
            session_id=session.id,
            scheduled_for=r["process_after"],
            run_at=run_at,
            detail=None if ack else "try limit reached",
        )
        n += 1
    return n


def _recent_enough(row: sqlite3.Row, since: datetime) -> bool:
    value = row["process_after"] or row["timestamp"]
    try:
        return value is None or parse_ts(str(value)) >= since
    except ValueError:
        return True


def _claimed(paths: SessionPaths, mid: str, known: KnownAcks | None = None) -> bool:
    ack = _acks(paths, [mid], known).get(mid)
    return ack is not None


class SeriesSweep:
    """The host's ``on_sweep_session`` hook (keeps a reference to the central DB)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __call__(self, ctx: SweepContext) -> datetime | None:
        return self.on_sweep_session(ctx)

    def on_sweep_session(self, ctx: SweepContext) -> datetime | None:
        inb, now = ctx.inbound, ctx.now
        soonest: datetime | None = None
        for head in due_heads(inb, now):
            try:
                other = ctx.other_max
                if other is None:
                    other = read_max_seq(ctx.paths.outbound)
                result = advance_series(
                    inb,
                    head,
                    now=now,
                    default_tz=ctx.timezone,
                    claimed=_claimed(ctx.paths, head["id"], ctx.task_acks),
                    other_max=other,
                    on_missed=lambda missed: record_missed(self.db, ctx.session, missed, now),
                )
            except Exception as exc:
                logger.warning(
                    "session %s: cannot advance series of %s (%r): %s",
                    ctx.session.id,
                    head["id"],
                    head["recurrence"],
                    exc,
                )
                continue
            soonest = earliest(soonest, result.next_at)
        try:
            sync_outcomes(self.db, ctx.session, ctx.paths, inb, now, ctx.task_acks, ctx.done)
        except sqlite3.Error:
            logger.exception("session %s: task history not recorded", ctx.session.id)
        head_due = next_head_due(inb)
        if head_due is not None and head_due <= now:  # a head that could not advance
            head_due = now + RETRY_BAD_HEAD
        return earliest(soonest, head_due)


def record_script_result(
    db: sqlite3.Connection,
    session: Session,
    c: dict[str, Any],
    inb: sqlite3.Connection,
    now: datetime,
) -> None:
    """A ``task_script_result`` action: ``skipped`` when the agent was not woken (replacing
    a ``ran`` the sweep may have recorded first), else a detail on the ``ran`` row."""
    task_id = c.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        logger.warning("task_script_result without taskId in session %s", session.id)
        return
    row = inb.execute(
        "SELECT series_id, process_after FROM messages_in WHERE id=?", (task_id,)
    ).fetchone()
    woke = bool(c.get("wakeAgent"))
    out = str(c.get("stdout") or "")[:SCRIPT_DETAIL_MAX]
    err = str(c.get("stderr") or "")[:SCRIPT_DETAIL_MAX]
    detail = dumps(
        {
            "script": {
                "exitCode": c.get("exitCode"),
                "timedOut": c.get("timedOut"),
                "error": c.get("error"),
                "stdout": out,
                "stderr": err,
            }
        }
    )
    if woke:  # the run is recorded from its ack; attach the script's output when it is
        db.execute(
            "UPDATE carapace_task_runs SET detail=? WHERE id=? AND detail IS NULL",
            (detail, task_id),
        )
        return
    duration = c.get("durationMs")
    record_run(
        db,
        run_id=task_id,
        series_id=(row["series_id"] if row else None) or task_id,
        outcome="skipped",
        now=now,
        agent_group_id=session.agent_group_id,
        session_id=session.id,
        scheduled_for=row["process_after"] if row else None,
        duration_ms=int(duration) if isinstance(duration, int | float) else None,
        detail=detail,
        replace=True,
    )
