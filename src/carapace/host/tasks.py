"""Operator-side task management (``carapace admin tasks …``): find, describe, create.

Tasks live in the session DBs (``messages_in`` rows, ``kind='task'``); these functions
look across the sessions of the central DB. A task created by the operator goes into the
session of the group's first wiring (its origin chat, e.g. the CLI chat of ``main``),
created when missing, and is routed to that chat so the agent's reply goes there; a group
with no wiring gets its ``agent-shared`` session and no routing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from carapace.config import Home
from carapace.db import messaging
from carapace.db.session import SessionPaths, open_inbound
from carapace.db.sessions import Session, list_sessions
from carapace.errors import NotFoundError, ValidationError
from carapace.host.sessions import SessionManager
from carapace.host.task_runs import history
from carapace.sched import cron, series
from carapace.timefmt import iso, new_id, parse_ts, sqlite_ts

WAKE_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class Found:
    session: Session
    series_id: str


def _inbound(home: Home, s: Session) -> sqlite3.Connection | None:
    paths = SessionPaths.of(home.data_dir, s.agent_group_id, s.id)
    if not paths.inbound.exists():
        return None
    return open_inbound(paths)


@contextlib.contextmanager
def session_inbound(home: Home, s: Session) -> Iterator[sqlite3.Connection]:
    conn = _inbound(home, s)
    if conn is None:
        raise NotFoundError(f"session {s.id} has no inbound.db")
    try:
        yield conn
    finally:
        conn.close()


def find_task(db: sqlite3.Connection, home: Home, task_id: str) -> Found:
    """The session holding a task (by series id or occurrence id)."""
    for s in list_sessions(db):
        conn = _inbound(home, s)
        if conn is None:
            continue
        try:
            r = conn.execute(
                "SELECT COALESCE(series_id, id) FROM messages_in WHERE kind='task' "
                "AND (id=? OR series_id=?) LIMIT 1",
                (task_id, task_id),
            ).fetchone()
        finally:
            conn.close()
        if r is not None:
            return Found(s, str(r[0]))
    raise NotFoundError(f"no task {task_id!r}")


def _local(value: str | None, tz: str) -> str | None:
    if not value:
        return None
    try:
        when = parse_ts(value).astimezone(cron.validate_timezone(tz))
    except (ValueError, Exception):
        return value
    return when.isoformat(timespec="seconds") + f" {tz}"


def describe(
    inb: sqlite3.Connection, s: Session, series_id: str, default_tz: str
) -> dict[str, Any]:
    rows = inb.execute(
        "SELECT * FROM messages_in WHERE kind='task' AND COALESCE(series_id, id)=? ORDER BY seq",
        (series_id,),
    ).fetchall()
    if not rows:
        raise NotFoundError(f"no task {series_id!r}")
    latest = rows[-1]
    live = [r for r in rows if r["status"] in ("pending", "paused")]
    head = next((r for r in live if r["recurrence"]), live[-1] if live else latest)
    c = series.TaskContent.parse(head["content"])
    tz = c.zone(default_tz)
    upcoming = sorted(
        (r for r in live if r["process_after"]), key=lambda r: parse_ts(r["process_after"])
    )
    nxt = upcoming[0]["process_after"] if upcoming else None
    recurrence = next((r["recurrence"] for r in reversed(rows) if r["recurrence"]), None)
    return {
        "id": series_id,
        "agent_group_id": s.agent_group_id,
        "session_id": s.id,
        "status": head["status"] if live else latest["status"],
        "prompt": c.prompt,
        "script": c.script,
        "recurrence": recurrence,
        "timezone": tz,
        "catch_up": c.catch_up,
        "next_run": _local(nxt, tz),
        "next_run_utc": nxt,
        "occurrences": len(rows),
    }


def list_tasks(
    db: sqlite3.Connection,
    home: Home,
    default_tz: str,
    *,
    agent_group_id: str | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in list_sessions(db, agent_group_id=agent_group_id):
        conn = _inbound(home, s)
        if conn is None:
            continue
        try:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT COALESCE(series_id, id) FROM messages_in WHERE kind='task'"
                )
            ]
            for sid in ids:
                d = describe(conn, s, sid, default_tz)
                if (status is None and d["status"] in ("pending", "paused")) or d[
                    "status"
                ] == status:
                    out.append(d)
        finally:
            conn.close()
    out.sort(key=lambda d: d["next_run_utc"] or "~")
    return out


def get_task(db: sqlite3.Connection, home: Home, task_id: str, default_tz: str) -> dict[str, Any]:
    found = find_task(db, home, task_id)
    with session_inbound(home, found.session) as inb:
        d = describe(inb, found.session, found.series_id, default_tz)
    d["history"] = [
        {k: r[k] for k in ("scheduled_for", "run_at", "outcome", "detail")}
        for r in history(db, found.series_id)
    ]
    return d


def operator_session(
    db: sqlite3.Connection, mgr: SessionManager, agent_group_id: str, now: datetime
) -> tuple[Session, tuple[str | None, str | None, str | None]]:
    """The session an operator's task goes to and its routing (channel, platform, thread)."""
    wirings = messaging.list_wirings(db, agent_group_id)
    if not wirings:
        s, _ = mgr.resolve(agent_group_id, None, None, "agent-shared", now=now)
        return s, (None, None, None)
    w = wirings[0]
    mg = messaging.get_messaging_group(db, w.messaging_group_id)
    if mg is None:  # pragma: no cover - FK
        raise NotFoundError(f"messaging group {w.messaging_group_id} is gone")
    mode = w.sessions if w.sessions != "per-thread" else "shared"
    s, _ = mgr.resolve(agent_group_id, mg.id, None, mode, now=now)
    return s, (mg.channel_type, mg.platform_id, None)


def first_run(at: datetime | None, recurrence: str | None, tz: str, now: datetime) -> datetime:
    if at is not None:
        return at
    if recurrence:
        return series.first_after(recurrence, tz, now, now)
    return now


def parse_at(value: str, tz: str) -> datetime:
    from carapace.runner.formatter import parse_zoned_to_utc

    try:
        return parse_zoned_to_utc(value, tz)
    except (ValueError, OverflowError):
        raise ValidationError(f"invalid time {value!r}: use ISO 8601 (a zone is optional)")


def create_task(
    db: sqlite3.Connection,
    home: Home,
    agent_group_id: str,
    *,
    prompt: str,
    at: str | None,
    recurrence: str | None,
    tz: str,
    catch_up: str | None,
    script: str | None,
    now: datetime,
) -> tuple[Session, str, datetime]:
    """Write the first occurrence; returns (session, series id, first run time)."""
    if not prompt.strip():
        raise ValidationError("--prompt must not be empty")
    cron.validate_timezone(tz)
    if recurrence:
        series.validate_recurrence(recurrence)
    policy = series.check_catch_up(catch_up)
    when = first_run(parse_at(at, tz) if at else None, recurrence, tz, now)
    mgr = SessionManager(home, db)
    s, (channel, platform, thread) = operator_session(db, mgr, agent_group_id, now)
    task_id = new_id("task", now)
    content = series.TaskContent(prompt, script or None, tz, policy)
    mgr.write_message(
        s,
        {
            "id": task_id,
            "kind": "task",
            "timestamp": sqlite_ts(now),
            "process_after": iso(when),
            "recurrence": recurrence or None,
            "platform_id": platform,
            "channel_type": channel,
            "thread_id": thread,
            "series_id": task_id,
            "content": content.to_json(),
        },
        now=now,
        due=iso(when),
    )
    return s, task_id, when


def soon(when: datetime | None, now: datetime) -> bool:
    return when is not None and when - now <= WAKE_WINDOW
