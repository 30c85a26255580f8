"""The host's side of a runner's life: what a spawn needs prepared (files in a worker
thread, the session's connections kept, the provider chosen), and what an exit leaves to do
(claims reset, a quick crash backed off, the session swept again); and what a live
runner's commit sets off (new replies drained, acks copied in batches, idle slots yielded)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from carapace.db.session import SessionPaths
from carapace.db.sessions import set_container_status
from carapace.host import host_watch
from carapace.host.delivery_log import RideAlong
from carapace.host.outbox_reader import OutboxRefused
from carapace.host.sessions import keep_bounded
from carapace.host.sweep import (
    ACK_BATCH,
    ACK_FLUSH_S,
    SLA_CHECK_S,
    apply_acks_on,
    due_iso,
    idle_since,
    new_acks,
    new_acks_on,
    reset_claims,
)
from carapace.host.wake_files import WakePlan, wake_plan, write_wake_files
from carapace.runner.transcript import adopt_legacy_transcript
from carapace.sandbox.process import RunnerExit, RunnerSpec

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger("carapace.host.host")

SPAWN_BACKOFF_MAX_S = 300.0


@dataclass
class SpawnHealth:
    """Quick crashes of one session's runner, and when the next spawn may be tried."""

    quick_exits: int = 0
    not_before: datetime | None = None


async def prepare(host: Host, session_id: str) -> RunnerSpec | None:
    """Before a spawn. Central-DB reads and writes stay on the event loop; the file work
    (projections, container.json, CLAUDE.md, transcript adoption) runs in a worker
    thread and writes only what changed."""
    if host._stopping:
        return None
    session = host.sessions.get(session_id)
    if session is None or (session.status or "active") != "active":
        return None
    plan = wake_plan(host.db, host.home, host.sessions.paths(session), session)
    agent_dir = plan.agent_dir
    paths = host.sessions.paths(session)
    await asyncio.to_thread(functools.partial(wake_files, host), plan, session.id)
    if host._stopping:
        return None
    set_container_status(host.db, session.id, "running")
    host.sessions.keep(session)  # persistent connections while the runner lives
    host._runner_paths[session.id] = paths
    host.db.execute(
        "UPDATE sessions SET last_active=? WHERE id=?", (due_iso(host.now()), session.id)
    )
    if host._watcher is not None:
        host_watch.watch_session(host, paths.root)
    host.sessions.work.mark(session.id, due_iso(host.now() + timedelta(seconds=SLA_CHECK_S)) or "")
    env = {"CARAPACE_TZ": host.settings.timezone, **host.options.runner_env}
    streams = host.previews.channels()
    if streams:  # replies shown as they are written (host/preview.py)
        env["CARAPACE_STREAM_CHANNELS"] = ",".join(streams)
        if host._background:
            host.previews.resume(session.id)
    cfg = host.db.execute(
        "SELECT provider FROM container_configs WHERE agent_group_id=?",
        (session.agent_group_id,),
    ).fetchone()
    provider = session.agent_provider or (cfg[0] if cfg and cfg[0] else None)
    provider = provider or host.settings.default_provider
    if provider is None and host.proxy is not None:
        provider = host.proxy.default_provider()
    return RunnerSpec(session.id, session.agent_group_id, paths.root, agent_dir, provider,
                      host.settings.runner_idle_exit_s, env)  # fmt: skip


def wake_files(host: Host, plan: WakePlan, session_id: str) -> None:
    heal_folder_mode(plan.paths.root)
    write_wake_files(host.home, plan)
    adopt_legacy_transcript(plan.agent_dir, plan.paths.root, session_id)  # out of the group
    with contextlib.suppress(FileNotFoundError):
        plan.paths.heartbeat.unlink()


def heal_folder_mode(root: Path) -> None:
    """A session folder the runner cannot enter (mode 0600: made by an older version while
    another thread had the process umask at 0o177) is made 0700 again before a spawn, with
    a warning; its runner failed at every start before. The link is not followed."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # missing (made again by the caller's caller) or not a folder: not ours here
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o700 != 0o700:
            os.fchmod(fd, (mode | 0o700) & 0o700)
            logger.warning("session folder %s had mode %o (its runner could not enter it): "
                           "made 0700", root, mode)  # fmt: skip
    except OSError as exc:
        logger.warning("session folder %s: mode not checked: %s", root, exc)
    finally:
        os.close(fd)


def on_exit(host: Host, session_id: str, exit: RunnerExit) -> None:
    host._host_seen.forget(session_id)
    host.typing.stop(session_id)
    host._idle_cache.pop(session_id, None)
    host._last_commit.pop(session_id, None)
    host._work_seen.pop(session_id, None)
    paths = host._runner_paths.pop(session_id, None)
    if paths is not None:
        host_watch.unwatch_session(host, paths.root)
    host._ack_rowid.pop(session_id, None)
    if not host._closed:
        with contextlib.suppress(sqlite3.Error):
            host.sessions.release(session_id)
    if host._acks_due.get(session_id) and not host._closed:
        host._spawn(flush_acks(host, session_id))
    if host.proxy is not None:
        host.proxy.egress.session_ended(session_id)
    if host._closed:  # claims are reset by the next start's sweep
        return
    session = host.sessions.get(session_id)
    if session is None:
        return
    now = host.now()
    with contextlib.suppress(sqlite3.Error):
        set_container_status(host.db, session_id, "stopped")
    count = exit.count_try or (exit.reason is None and exit.returncode != 0)
    h = host._health.setdefault(session_id, SpawnHealth())
    quick = (now - exit.started_at).total_seconds() < 5 and exit.returncode != 0
    if quick and exit.reason is None:
        h.quick_exits += 1
        delay = min(SPAWN_BACKOFF_MAX_S, 2.0**h.quick_exits)
        h.not_before = now + timedelta(seconds=delay)
        logger.error("runner of session %s exited at once (code %s); next try in %.0f s",
                     session_id, exit.returncode, delay)  # fmt: skip
    elif exit.returncode == 0 or not quick:
        host._health.pop(session_id, None)
    if not host._started:
        release(host, session_id, now, count)
        return
    host._releasing.add(session_id)
    host._spawn(after_exit(host, session_id, now, count, h.not_before or now))


def release(host: Host, session_id: str, now: datetime, count: bool) -> None:
    """Reset the claims a dead runner held (writes its outbound.db: schema-checked)."""
    session = host.sessions.get(session_id)
    if session is None:
        return
    retried, failed = reset_claims(
        host.sessions.paths(session), now, host.settings.max_tries, count_try=count
    )
    if retried or failed:
        logger.warning("runner of session %s died holding %s; retried %s, failed %s",
                       session_id, retried + failed, retried, failed)  # fmt: skip


async def after_exit(
    host: Host, session_id: str, now: datetime, count: bool, due: datetime
) -> None:
    try:
        await host.delivery.outbox.call(functools.partial(release, host), session_id, now, count)
    finally:
        host._releasing.discard(session_id)
    host.sessions.work.mark(session_id, due_iso(due) or "")
    host._kick_sweep()
    host._on_outbound_change(session_id)


async def after_commit(host: Host, session_id: str) -> None:
    """A runner committed: deliver what is new, note its new acks (one cheap read of
    what changed since the last one, off the loop); when work is queued for a runner
    slot, see whether this runner has become idle."""
    if host.pool.is_running(session_id):
        host._last_commit[session_id] = host.now()
    # the new acks are read in the drain's own read of outbound.db (one transaction, one
    # thread hop), so they are noted before its outcomes commit, which then carries them
    # (acks_ride_along): the reply's ack is copied with the reply's delivery, no commit of
    # its own. A drain that made no read (one under way took it over, or there was nothing
    # to read) leaves them to a read of their own.
    rowid = host._ack_rowid.get(session_id, -1)
    host.delivery.read_along(session_id, functools.partial(new_acks_on, after_rowid=rowid),
                             functools.partial(noted_acks, host, session_id))  # fmt: skip
    try:
        await host._drain(session_id)
    finally:
        left = host.delivery.take_along(session_id)
    if left:
        noting = host._noting[session_id] = asyncio.ensure_future(note_new_acks(host, session_id))
        try:
            await noting
        finally:
            if host._noting.get(session_id) is noting:
                del host._noting[session_id]
    due = host._acks_due.get(session_id)
    if due and (len(due) >= ACK_BATCH or not host.pool.is_running(session_id)):
        await flush_acks(host, session_id)
    elif due:  # noted after the drain's commit: with the next one (acks_ride_along), or soon
        arm_ack_timer(host, session_id)
    if host.pool.queued():
        work_seen(host, session_id)
        host._kick_idle_refresh()


async def note_new_acks(host: Host, session_id: str) -> None:
    """Note the session's terminal acks committed since the last look (one cheap read of
    what changed, off the loop), to be copied into ``messages_in``."""
    session = host.sessions.get(session_id)
    if session is None:
        return
    paths = host.sessions.paths(session)
    try:
        found = await host.delivery.outbox.call(
            new_acks, paths.outbound, host._ack_rowid.get(session_id, -1)
        )
    except (OSError, OutboxRefused, TimeoutError):
        return
    noted_acks(host, session_id, found)


def noted_acks(host: Host, session_id: str, found: tuple[int, dict[str, str]]) -> None:
    """What :func:`new_acks` found: the rowid read up to, and the terminal acks to copy."""
    top, acks = found
    if top:
        if session_id not in host._ack_rowid:  # (set again by the drain after a runner's
            keep_bounded(host._ack_rowid)  # exit, which dropped it: so bounded here)
        host._ack_rowid[session_id] = top
    done = {m: st for m, st in acks.items() if st in ("completed", "failed")}
    if done:
        host._acks_due.setdefault(session_id, {}).update(done)


def arm_ack_timer(host: Host, session_id: str) -> None:
    if session_id not in host._ack_timers:
        host._ack_timers[session_id] = asyncio.get_running_loop().call_later(
            ACK_FLUSH_S, lambda: host._spawn(flush_acks(host, session_id))
        )


async def acks_ride_along(host: Host, session_id: str) -> RideAlong | None:
    """The session's noted acks, copied into ``messages_in`` in the commit of delivery's
    outcomes instead of a commit of their own (issue 19: one more commit per reply, and a
    wake of the runner); a read of new acks under way (after_commit's own, when its drain
    made no read to carry it) is waited for, so a reply's ack goes with the reply's outcome.
    When that commit does not happen they are noted again, for the next one or their
    timer."""
    noting = host._noting.get(session_id)
    if noting is not None and not noting.done():
        # (shielded: a cancelled commit leaves the read to its owner; its failure is its
        # owner's to report, never a reason to keep delivery's records from their commit)
        with contextlib.suppress(Exception):
            await asyncio.shield(noting)
    return acks_ride_along_now(host, session_id)


def acks_ride_along_now(host: Host, session_id: str) -> RideAlong | None:
    """:func:`acks_ride_along` for a commit that cannot wait (a write carrying delivery's
    held outcomes, host/delivery_hold.py): None while a read of new acks is under way (they
    go with the next commit, or their timer)."""
    noting = host._noting.get(session_id)
    if noting is not None and not noting.done():
        return None
    due = host._acks_due.pop(session_id, None)
    if not due:
        return None
    timer = host._ack_timers.pop(session_id, None)
    if timer is not None:
        timer.cancel()

    def done(task: object) -> None:
        if task and not host._stopping:  # the sweep records the task's run
            host.sessions.work.mark(session_id, due_iso(host.now()) or "")
            host._kick_sweep()

    def undo() -> None:
        noted = host._acks_due.setdefault(session_id, {})
        for message_id, status in due.items():
            noted.setdefault(message_id, status)
        if not host._stopping:
            arm_ack_timer(host, session_id)

    return RideAlong(functools.partial(apply_acks_on, done=due), done, undo)


async def flush_acks(host: Host, session_id: str) -> None:
    """Copy the noted terminal acks into ``messages_in`` (one transaction, a worker
    thread); the sweep's full ack sync catches anything a batch has not covered."""
    timer = host._ack_timers.pop(session_id, None)
    if timer is not None:
        timer.cancel()
    due = host._acks_due.pop(session_id, {})
    session = host.sessions.get(session_id)
    if due and session is not None:
        try:
            task = await host.sessions.writers.call(  # after the session's other writes
                session_id, host.sessions.paths(session), functools.partial(apply_acks_on, done=due)
            )
        except (OSError, sqlite3.Error) as exc:  # e.g. the session folder was deleted
            logger.warning("acks of session %s not copied now (the sweep will): %s",
                           session_id, exc)  # fmt: skip
            return
        if task and not host._stopping:  # the sweep records the task's run
            host.sessions.work.mark(session_id, due_iso(host.now()) or "")
            host._kick_sweep()


def work_seen(host: Host, session_id: str) -> None:
    """The session has (or may have) new work: its idle state is unknown again, and a scan
    begun before now must not store what it found."""
    host._idle_cache.pop(session_id, None)
    host._work_seen[session_id] = host._work_seen.get(session_id, 0) + 1


IDLE_SCAN_CHUNK = 16  # sessions per worker call (each call is bounded by the reader's timeout)


def idle_scan(todo: list[tuple[str, SessionPaths, datetime]], now: datetime
              ) -> list[tuple[str, datetime | None, bool]]:  # fmt: skip
    """``idle_since`` of several sessions in one worker call: (sid, since, ok)."""
    out: list[tuple[str, datetime | None, bool]] = []
    for sid, paths, started in todo:
        try:
            out.append((sid, idle_since(paths, now, started), True))
        except Exception:
            logger.exception("idle check of session %s failed", sid)
            out.append((sid, None, False))
    return out


async def refresh_idle(host: Host) -> None:
    """Scan the live sessions make_room does not know about (worker thread, a few per
    call), then let the pool yield idle slots to queued work."""
    await asyncio.sleep(0)
    host._idle_refresh = False
    if not host.pool.queued():
        return  # nothing waits for a slot: nobody needs to know who is idle
    now = host.now()
    todo: list[tuple[str, SessionPaths, datetime]] = []
    for sid in host.pool.running:
        paths = host._runner_paths.get(sid)
        if sid not in host._idle_cache and paths is not None:
            todo.append((sid, paths, host.pool.started_at(sid) or now))
    seen = {sid: host._work_seen.get(sid, 0) for sid, _p, _s in todo}
    for i in range(0, len(todo), IDLE_SCAN_CHUNK):
        try:
            found = await host.delivery.outbox.call(idle_scan, todo[i : i + IDLE_SCAN_CHUNK], now)
        except Exception:
            logger.exception("idle check of %d sessions failed", len(todo[i : i + IDLE_SCAN_CHUNK]))
            continue
        for sid, since, ok in found:
            if host._work_seen.get(sid, 0) != seen[sid] or sid not in host.pool.running:
                continue  # work came while it was scanned: asked again by the next pass
            if not ok:  # counted as busy until its next sign of work (no retry loop)
                host._idle_cache[sid] = None
                continue
            last = host._last_commit.get(sid)
            if since is not None and last is not None:
                since = max(since, last)  # a commit is activity, whatever the heartbeat says
            host._idle_cache[sid] = since
    if host.pool.queued():
        host.pool.make_room()
