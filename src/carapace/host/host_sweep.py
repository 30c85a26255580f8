"""The host's sweep pass: for each session with work due, reset a dead runner's claims,
stop a stuck or idle runner, run the task-series hook, wake a runner for due messages,
drain replies, and record when the session needs looking at next. ``sweep_loop`` runs a
pass whenever work is due or the host kicks it (and at least every ``SAFETY_TICK_S``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from carapace.errors import no_space
from carapace.host.delivery import DrainResult
from carapace.host.delivery_log import RECORD_RETRY_S, delivery_cursor
from carapace.host.sweep import (
    SLA_CHECK_S,
    Claim,
    SessionScan,
    SweepContext,
    SweepReport,
    apply_acks_on,
    container_state,
    decide_stuck_action,
    due_iso,
    earliest,
    heartbeat_at,
    reset_claims,
    scan_session,
)

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger("carapace.host.host")

SAFETY_TICK_S = 60.0
T = TypeVar("T")
_pause = asyncio.sleep  # (tests replace it to see the backoff without waiting)
FAIL_BACKOFF_S = 0.5  # first wait after a failed pass; doubles per failed pass, ≤ the tick
# how long one session's look waits for its writes and delivery pass before the sweep goes
# on without them (they go on by themselves)
LOOK_WAIT_S = 0.25
LOOK_WAIT_MIN_S = 0.05  # … and each of them at least this long


async def sweep_once(host: Host, now: datetime | None = None) -> SweepReport:
    when = now or host.now()
    report = SweepReport()
    for sid in host.sessions.work.due(when):
        try:
            await sweep_session(host, sid, when, report)
        except Exception as exc:
            report.errors.append(sid)
            log_failure(f"sweep of session {sid} failed", exc)
            try:
                host.sessions.work.set(sid, due_iso(when + timedelta(seconds=SAFETY_TICK_S)))
            except sqlite3.Error as again:  # e.g. the disk is still full: the loop backs off
                logger.debug("work index of %s not updated: %s", sid, again)
    return report


def log_failure(what: str, exc: BaseException) -> None:
    """A full disk is one line (it is said every pass until there is room); anything else
    keeps its traceback."""
    if no_space(exc):
        logger.error("%s: %s (no space left; retried with backoff)", what, exc)
    else:
        logger.exception(what)


async def sweep_session(host: Host, sid: str, now: datetime, report: SweepReport) -> None:
    session = host.sessions.get(sid)
    if session is None or (session.status or "active") != "active":
        host.sessions.work.set(sid, None)
        return
    paths = host.sessions.paths(session)
    if not paths.inbound.exists():
        host.sessions.work.set(sid, None)
        return
    report.visited.append(sid)
    work = host.sessions.work
    work.watch(sid)  # rows written while it looks ask for their own due (work_index.py)
    try:
        nxt = await _look(host, sid, session, paths, now, report)
    finally:
        asked = work.unwatch(sid)
    work.set(sid, due_iso(nxt))
    if asked is not None:  # (written only when earlier than what the sweep set)
        work.mark(sid, asked)


async def _scan(host: Host, sid: str, paths: Any, now: datetime, until: float,
                handed: set[str]) -> SessionScan:  # fmt: skip
    """``scan_session`` off the loop (it only reads); the finished rows it found that this
    look has not ``handed`` to the session's writer yet are copied into ``inbound.db`` by
    it, waited for until ``until`` (the look's :func:`_bounded` budget)."""
    look_from = getattr(host.hooks.on_sweep_session, "look_from", None)
    look = look_from(sid) if look_from is not None else None
    scan = await host.delivery.outbox.call(scan_session, paths, now, look, host.home.central_db)
    new = {mid: st for mid, st in scan.done.items() if mid not in handed}
    if new:  # (counted as finished by this look whether copied now or later)
        handed.update(new)
        copy = host.sessions.writers.call(sid, paths, functools.partial(apply_acks_on, done=new))
        await _bounded(host, copy, until, f"acks of session {sid} not copied now "
                                          "(its next sweep will)")  # fmt: skip
    return scan


async def _bounded(host: Host, aw: Awaitable[T], until: float, failed: str) -> T | None:
    """``aw``'s result if it ends before ``until`` (the loop's clock), else None: it goes
    on by itself, the host's (its stop waits for it). A session's look waits
    :data:`LOOK_WAIT_S` at most for its writes and delivery: one held up (the agent keeps
    a lock on its ``inbound.db``, a slow channel) never holds up the other sessions. A
    file or database error is logged as ``failed`` (None)."""
    task = asyncio.ensure_future(_logged(aw, failed))
    left = until - asyncio.get_running_loop().time()
    try:
        done, _ = await asyncio.wait({task}, timeout=max(LOOK_WAIT_MIN_S, left))
    except asyncio.CancelledError:  # (the host stops)
        task.cancel()
        raise
    if task in done:
        return task.result()
    host._keep(task)
    return None


async def _logged(aw: Awaitable[T], failed: str) -> T | None:
    try:
        return await aw
    except (OSError, sqlite3.Error) as exc:
        logger.warning("%s: %s", failed, exc)
        return None


async def _look(host: Host, sid: str, session: Any, paths: Any, now: datetime,
                report: SweepReport) -> datetime | None:  # fmt: skip
    """One session's sweep; its next due time."""
    running = host.pool.is_running(sid)
    off = host.delivery.outbox.call  # outbound.db is read off the loop, bounded
    until = asyncio.get_running_loop().time() + LOOK_WAIT_S
    handed: set[str] = set()  # finished rows this look had the writer copy
    scan = await _scan(host, sid, paths, now, until, handed)
    if not running and scan.claims and sid not in host._releasing:
        retried, failed = await off(
            functools.partial(reset_claims, count_try=True), paths, now,
            host.settings.max_tries,
        )  # fmt: skip
        report.reset.extend(retried)
        report.failed.extend(failed)
        scan = await _scan(host, sid, paths, now, until, handed)
    started = host.pool.started_at(sid)
    if running and started is not None:
        seen = host._host_seen
        live = [Claim(m, seen.clamp(sid, f"claim:{m}", t, now)) for m, t in scan.claims.items()
                if t is not None and t >= started - timedelta(seconds=1)]  # fmt: skip
        beat = seen.clamp(sid, "heartbeat", heartbeat_at(paths), now)
        action, mid = decide_stuck_action(now, beat, await off(container_state, paths), live)
        if action != "ok":
            logger.warning("session %s: %s (message %s); stopping its runner", sid, action, mid)
            report.killed.append((sid, action))
            host._spawn(host.pool.stop(sid, action, count_try=True))
        elif not scan.due_now and not scan.claims and idle(host, paths, started, now):
            host._spawn(host.pool.stop(sid, "idle"))
    # the hook (task series: hand-over, catch-up, history) runs before the wake decision,
    # only for a session with a task or a recurring row
    hook_next = await _series(host, sid, session, paths, now, scan, until) if scan.series else None
    if hook_next is not None or scan.due_now:
        scan = await _scan(host, sid, paths, now, until, handed)
    h = host._health.get(sid)
    blocked = h is not None and h.not_before is not None and h.not_before > now
    if scan.due_now and not running and not blocked:
        host.pool.wake(sid)
        report.woken.append(sid)
    r = await _bounded(host, host.delivery.drain(sid, lambda: now), until,
                       f"delivery of session {sid}")  # fmt: skip
    if r is None:  # still under way, or failed: looked at again soon
        r = DrainResult(next_retry=now + timedelta(seconds=RECORD_RETRY_S))
    if r.delivered:
        host.typing.stop(sid)
    alive = host.pool.is_running(sid)
    return earliest(
        scan.next_due, hook_next, r.next_retry,
        now + timedelta(seconds=SLA_CHECK_S) if alive else None,
        h.not_before if (blocked and h is not None and scan.due_now) else None,
    )  # fmt: skip


async def _series(host: Host, sid: str, session: Any, paths: Any, now: datetime,
                  scan: SessionScan, until: float) -> datetime | None:  # fmt: skip
    """The series hook on the session's writer thread, never on the loop: it may hand a
    series over (a durable commit of ``inbound.db``) and record history. Waited for until
    ``until``; one still under way (the agent keeps its file locked) goes on by itself and
    the session is looked at again soon."""
    hook = host.hooks.on_sweep_session
    known = host.sessions.known_out_max(sid)
    tz = host.settings.timezone

    def job(inb: sqlite3.Connection) -> tuple[datetime | None]:
        other = known if known is not None else delivery_cursor(inb)
        return (hook(SweepContext(session, paths, inb, now, tz, other, scan.tasks, scan.done)),)

    r = await _bounded(host, host.sessions.writers.call(sid, paths, job), until,
                       f"task series of session {sid}")  # fmt: skip
    return r[0] if r is not None else now + timedelta(seconds=RECORD_RETRY_S)


def sessions_inbound(host: Host, paths: Any) -> sqlite3.Connection:
    from carapace.db.session import open_inbound

    return open_inbound(paths)


def idle(host: Host, paths: Any, started: datetime, now: datetime) -> bool:
    limit = host.settings.runner_idle_exit_s
    if not limit or limit <= 0:
        return False
    hb = heartbeat_at(paths)
    last = max(started, hb) if hb is not None else started
    return (now - last).total_seconds() > 2 * limit


async def sweep_loop(host: Host) -> None:
    assert host._sweep_event is not None
    # ``not host._stopping``: Python 3.11's ``wait_for`` can swallow a cancellation that
    # lands as the event is set; the loop must still end when the host stops
    failures = 0  # passes in a row that hit an error: they back off (a full disk must not
    # make the sweep spin, retrying and logging as fast as it can)
    while not host._stopping:
        try:
            report = await sweep_once(host)
            failures = failures + 1 if report.errors else 0
        except Exception as exc:
            failures += 1
            log_failure("sweep pass failed", exc)
        delay = SAFETY_TICK_S
        try:
            nxt = host.sessions.work.next_due()
        except sqlite3.Error:
            nxt = None
        if nxt:
            from carapace.timefmt import parse_ts

            delay = max(0.0, min(delay, (parse_ts(nxt) - host.now()).total_seconds()))
        host._sweep_event.clear()
        if failures:  # wait it out (a kick meanwhile takes effect after it): nothing can be
            # written yet, and a pass that fails at once must not spin
            backoff = min(SAFETY_TICK_S, FAIL_BACKOFF_S * 2 ** min(failures - 1, 8))
            await _pause(backoff)
            delay = max(0.0, delay - backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(host._sweep_event.wait(), delay + 0.005)
