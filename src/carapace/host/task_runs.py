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

import contextlib
import logging
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from carapace.db.connection import connect, is_busy, transaction
from carapace.db.sessions import Session
from carapace.host.sessions import keep_bounded
from carapace.host.sweep import (
    SweepContext,
    TaskLook,
    TaskRow,
    TaskRows,
    earliest,
)
from carapace.jsonutil import dumps
from carapace.sched.series import Missed, advance_series, due_heads, next_head_due
from carapace.timefmt import iso, parse_ts

logger = logging.getLogger(__name__)

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


def sync_outcomes(
    db: sqlite3.Connection,
    session: Session,
    tasks: TaskRows,
    now: datetime,
    done: dict[str, str] | None = None,
) -> tuple[int, frozenset[str]]:
    """Record ``ran``/``failed`` for the finished occurrences among ``tasks`` (the rows of
    the last :data:`TASK_HISTORY_WINDOW` the sweep's scan found since the last look; ``done``: rows still pending in the file that
    the runner's acks say are finished). Returns (rows recorded, ids not settled yet: still
    to run, under way, or their outcome not known)."""
    done = done or {}
    open_ids: set[str] = set()
    finished: list[tuple[TaskRow, str, tuple[str, str | None] | None]] = []
    for r in tasks.rows:
        status = done.get(r.id) if r.status == "pending" else r.status
        ack = tasks.acks.get(r.id)
        if status not in ("completed", "failed") or (ack is not None and ack[0] == "processing"):
            open_ids.add(r.id)
        elif ack is not None or status == "failed":
            finished.append((r, status, ack))
        # (completed with no ack: cancelled, or missed and recorded as such already)
    known: set[str] = set()
    ids = [r.id for r, _s, _a in finished]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" for _ in chunk)
        known.update(
            x[0]
            for x in db.execute(f"SELECT id FROM carapace_task_runs WHERE id IN ({marks})", chunk)
        )
    todo = [f for f in finished if f[0].id not in known]
    for i in range(0, len(todo), RECORD_SLICE):
        with transaction(db):  # (a short write lock: the event loop writes this DB too)
            for r, status, ack in todo[i : i + RECORD_SLICE]:
                outcome = "failed" if (ack and ack[0] == "failed") or status == "failed" else "ran"
                record_run(
                    db,
                    run_id=r.id,
                    series_id=r.series_id or r.id,
                    outcome=outcome,
                    now=now,
                    agent_group_id=session.agent_group_id,
                    session_id=session.id,
                    scheduled_for=r.process_after,
                    run_at=iso(parse_ts(ack[1])) if ack and ack[1] else iso(now),
                    detail=None if ack else "try limit reached",
                )
    return len(todo), frozenset(open_ids)


RECORD_SLICE = 100  # history rows per central transaction
UNSEEN_HEAD_RETRY = timedelta(seconds=1)


class SeriesSweep:
    """The host's ``on_sweep_session`` hook. It runs on the session writers' threads: the
    central DB is reached there through a connection of each thread's own (``central_db``;
    the history it writes is small, idempotent inserts, no sync: WAL), on the thread that
    made it (tests, tools) through ``db``."""

    def __init__(self, db: sqlite3.Connection, central_db: Path | None = None) -> None:
        self.db = db
        self._home_thread = threading.get_ident()
        self._central_db = central_db
        self._lock = threading.Lock()
        self._conns: dict[int, sqlite3.Connection] = {}
        self._looks: dict[str, TaskLook] = {}

    def __call__(self, ctx: SweepContext) -> datetime | None:
        return self.on_sweep_session(ctx)

    def central(self) -> sqlite3.Connection:
        """The central DB on the calling thread."""
        ident = threading.get_ident()
        if ident == self._home_thread:
            return self.db
        if self._central_db is None:
            raise RuntimeError("SeriesSweep: no central DB path for another thread")
        with self._lock:
            conn = self._conns.get(ident)
            if conn is None:
                conn = self._conns[ident] = connect(self._central_db, "central",
                                                    check_same_thread=False)  # fmt: skip
            return conn

    def look_from(self, session_id: str) -> TaskLook | None:
        """Where this hook's last look at the session's task rows ended (for the scan)."""
        with self._lock:
            return self._looks.get(session_id)

    def close(self) -> None:
        """Close the other threads' connections (after those threads ended)."""
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def on_sweep_session(self, ctx: SweepContext) -> datetime | None:
        inb, now = ctx.inbound, ctx.now
        db = self.central()
        soonest: datetime | None = None
        known = ctx.task_acks
        for head in due_heads(inb, now):
            hid = str(head["id"])
            if known is None or hid not in known[0]:  # written after the scan (or its acks
                soonest = earliest(soonest, now + UNSEEN_HEAD_RETRY)  # unread): next look
                continue
            try:
                result = advance_series(
                    inb,
                    head,
                    now=now,
                    default_tz=ctx.timezone,
                    claimed=hid in known[1],
                    other_max=ctx.other_max or 0,
                    on_missed=lambda missed: record_missed(db, ctx.session, missed, now),
                )
            except Exception as exc:
                if is_busy(exc):  # the agent's lock: the writer tries the whole job again
                    raise
                logger.warning(
                    "session %s: cannot advance series of %s (%r): %s",
                    ctx.session.id,
                    hid,
                    head["recurrence"],
                    exc,
                )
                continue
            soonest = earliest(soonest, result.next_at)
        if ctx.tasks is not None and ctx.tasks.acks_read:
            try:
                _n, open_ids = sync_outcomes(db, ctx.session, ctx.tasks, now, ctx.done)
            except sqlite3.Error:
                logger.exception("session %s: task history not recorded", ctx.session.id)
            else:
                self._settled(ctx.session.id, TaskLook(ctx.tasks.file, ctx.tasks.upto, open_ids))
        head_due = next_head_due(inb)
        if head_due is not None and head_due <= now:  # a head that could not advance
            head_due = now + RETRY_BAD_HEAD
        return earliest(soonest, head_due)

    def _settled(self, session_id: str, look: TaskLook) -> None:
        with self._lock:  # (a look dropped costs its session one first look again)
            if session_id not in self._looks:
                keep_bounded(self._looks)
            self._looks[session_id] = look


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
