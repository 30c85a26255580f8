"""The ``Host``: one asyncio process wiring channels, router, sessions, runners, delivery
and the sweep together (DESIGN §2). Also the Python API for tests (DESIGN §6)::

    host = Host(home, clock=FakeClock(), channels=[FakeChannel()], backend=FakeBackend())
    await host.start(background=False)        # no timers, no sockets: drive it by hand
    await host.route(event); await host.deliver_once(); await host.sweep_once(now)

Hooks for other modules: ``host.hooks.on_sweep_session(ctx)`` (recurrence, called once per
swept session), ``host.router.on_sender_approval`` / ``on_channel_request`` (approvals),
``host.actions.register(action, handler)`` (system actions).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from carapace.bootstrap import open_home
from carapace.channels.base import (
    ButtonClick,
    ChannelAdapter,
    ChannelCallbacks,
    ClickAnswer,
    InboundEvent,
)
from carapace.config import Home, Settings
from carapace.db.destinations import add_projection_hook, projection, remove_projection_hook
from carapace.db.projection import write_rows
from carapace.db.sessions import set_container_status
from carapace.errors import CarapaceError, ConfigError
from carapace.host import groupfiles, work_index
from carapace.host.actions import SystemActions
from carapace.host.delivery import Delivery
from carapace.host.outbox_reader import OutboxRefused
from carapace.host.pool import RunnerPool, cleanup_orphans
from carapace.host.router import Router, RouteResult
from carapace.host.sessions import SessionManager
from carapace.host.sweep import (
    ACK_BATCH,
    ACK_FLUSH_S,
    SLA_CHECK_S,
    Claim,
    HostSeen,
    SweepContext,
    SweepReport,
    apply_acks,
    container_state,
    decide_stuck_action,
    due_iso,
    earliest,
    heartbeat_at,
    idle_since,
    new_acks,
    reset_claims,
    scan_session,
)
from carapace.limits import mechanism as limits_mechanism
from carapace.perms import private_umask
from carapace.proxy.hostside import HostProxy, budget_warning
from carapace.runner.transcript import adopt_legacy_transcript
from carapace.sandbox.process import RunnerBackend, RunnerExit, RunnerSpec
from carapace.timefmt import Clock, SystemClock

if TYPE_CHECKING:
    from carapace.host.admin_server import AdminDispatch

logger = logging.getLogger(__name__)

SAFETY_TICK_S = 60.0
INDEX_SLICE = 200  # work-index rows written per transaction at start
SPAWN_BACKOFF_MAX_S = 300.0


class HostRunning(ConfigError):
    code = "host-running"


@dataclass
class HostHooks:
    # Callable[[SweepContext], datetime | None]; None = the task series (host/task_runs.py)
    on_sweep_session: Any = None


@dataclass
class _SpawnHealth:
    quick_exits: int = 0
    not_before: datetime | None = None


@dataclass
class HostOptions:
    sockets: bool = True  # cli.sock / ncl.sock (when a CLI channel is given / admin)
    watch: bool = True
    cleanup_orphans: bool = True
    runner_env: dict[str, str] = field(default_factory=dict)
    egress_proxy: bool = True  # runners reach models and the web only through the host


class Host:
    def __init__(
        self,
        home: Home,
        *,
        settings: Settings | None = None,
        clock: Clock | None = None,
        channels: Iterable[ChannelAdapter] = (),
        backend: RunnerBackend | None = None,
        hooks: HostHooks | None = None,
        options: HostOptions | None = None,
        admin: AdminDispatch | None = None,
    ) -> None:
        self.home = home
        # the admin verbs' dispatcher (``carapace.admin.dispatch.dispatch``), given by whoever
        # builds the host: the host floor does not import the admin floor above it
        self.admin_dispatch = admin
        self.settings = settings or home.load_settings()
        self.clock: Clock = clock or SystemClock()
        self.options = options or HostOptions()
        self.hooks = hooks or HostHooks()
        private_umask()  # session folders, DBs, transcripts, sockets: owner-only
        self.db, self.migrations = open_home(home)
        if self.hooks.on_sweep_session is None:
            from carapace.host.task_runs import SeriesSweep

            self.hooks.on_sweep_session = SeriesSweep(self.db)
        self.adapters: dict[str, ChannelAdapter] = {c.channel_type: c for c in channels}
        self.sessions = SessionManager(home, self.db)
        self.proxy: HostProxy | None = None
        try:
            self.backend: RunnerBackend = backend or self._default_backend()
            if self.options.egress_proxy:
                self.proxy = HostProxy(home, self.db, self.settings, on_warning=self._warn)
        except ConfigError:
            self.db.close()
            raise
        self._host_seen = HostSeen()  # agent-written times on the host's clock (stuck check)
        self.backend_note: str = getattr(self.backend, "note", f"{self.backend.name} (given)")
        self.pool = RunnerPool(
            self.proxy.wrap(self.backend) if self.proxy else self.backend,
            max_runners=self.settings.max_runners, prepare=self._prepare,
            on_exit=self._on_exit, now=self.now, idle_since=self._idle_since,
        )  # fmt: skip
        self.actions = SystemActions(
            self.sessions, self.wake, admin=self._admin_call, timezone=self.settings.timezone
        )
        self.delivery = Delivery(self.db, self.sessions, self.adapters, self.actions, self.wake)
        self.router = Router(self.db, self.sessions, self.adapters, self.wake)
        from carapace.host.typing import TypingKeeper

        self.typing = TypingKeeper(self.adapters, self._heartbeat_of, self.now)
        self._background = False
        self._failed_channels: set[str] = set()
        self._health: dict[str, _SpawnHealth] = {}
        self._releasing: set[str] = set()  # sessions whose dead runner's claims are being reset
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweep_event: asyncio.Event | None = None
        self._stopped = asyncio.Event()
        self._started = False
        self._stopping = False  # set by stop(): late callbacks and wakes become no-ops
        self._closed = False
        self._lock_fh: IO[str] | None = None
        self._watcher: Any = None
        self._admin_server: Any = None
        self._hook = self._projection_hook
        self._loop: asyncio.AbstractEventLoop | None = None
        self._projecting: set[asyncio.Task[Any]] = set()
        # pool.make_room's view of live runners: session → since when idle (None: busy),
        # filled off the event loop (_refresh_idle); a session with work drops its entry
        self._idle_cache: dict[str, datetime | None] = {}
        self._idle_refresh = False  # a refresh task is on its way
        # terminal acks read after runner commits, copied into messages_in in batches
        self._ack_rowid: dict[str, int] = {}
        self._acks_due: dict[str, dict[str, str]] = {}
        self._ack_timers: dict[str, asyncio.TimerHandle] = {}

    def _default_backend(self) -> RunnerBackend:
        """``settings.runner_backend`` (auto: bwrap when usable), per agent group overrides;
        a forced but unusable bwrap raises ``ConfigError`` here (docs/sandbox.md)."""
        from carapace.db.groups import get_container_config
        from carapace.sandbox.policy import SandboxBackend

        return SandboxBackend(
            self.home.root, self.settings, lambda gid: get_container_config(self.db, gid)
        )

    # ---------------------------------------------------------------- basics
    def now(self) -> datetime:
        return self.clock.now()

    def _projection_hook(self, db: sqlite3.Connection, agent_group_id: str) -> None:
        """A destination or wiring change (any thread, with that thread's connection): the
        rows are computed here; the sessions of the group with a live runner get them off
        the event loop, only where they differ. Others project on wake (``prepare_wake``)."""
        rows = projection(db, agent_group_id)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._project_live(agent_group_id, rows)
        else:
            loop.call_soon_threadsafe(self._project_live, agent_group_id, rows)

    def _project_live(self, agent_group_id: str, rows: list[Any]) -> None:
        if self._stopping:
            return
        live = []
        for sid in [*self.pool.running, *self.pool.spawning()]:
            session = self.sessions.get(sid)
            if session is not None and session.agent_group_id == agent_group_id:
                live.append(self.sessions.paths(session))
        if live:
            self._spawn(self._write_projection(live, rows))

    async def _write_projection(self, live: list[Any], rows: list[Any]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._projecting.add(task)
        try:
            for paths in live:
                try:
                    await asyncio.to_thread(write_rows, paths, rows)
                except (OSError, sqlite3.Error):
                    logger.exception("destinations projection failed for %s", paths.root.name)
        finally:
            if task is not None:
                self._projecting.discard(task)

    async def projection_idle(self) -> None:
        """Wait until the projections started so far are written (benchmarks, tests)."""
        while self._projecting:
            await asyncio.gather(*list(self._projecting), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        if self._stopping:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def wake(self, session_id: str) -> None:
        if self._stopping:  # the row is on disk: the next start's sweep picks it up
            return
        h = self._health.get(session_id)
        if h is not None and h.not_before is not None and h.not_before > self.now():
            self.sessions.mark_work(session_id, due_iso(h.not_before) or "")
            self._kick_sweep()
            return
        self._idle_cache.pop(session_id, None)  # it has work now
        if self.pool.is_running(session_id):
            return  # its runner wakes on the commit itself (inotify); the sweep is not needed
        self.pool.wake(session_id)
        self._kick_sweep()

    def _kick_sweep(self) -> None:
        if self._sweep_event is not None:
            self._sweep_event.set()

    # ---------------------------------------------------------------- lifecycle
    def _acquire_lock(self) -> None:
        self.home.data_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.home.pid_file, "a+")  # noqa: SIM115 - held for the host's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise HostRunning(f"a host is already running for {self.home.root}")
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    async def start(self, *, background: bool = True) -> None:
        """Take the home's lock, reap orphans, start channels, watcher, sweep and sockets.
        ``background=False`` (tests): no timers or watchers; drive the passes by hand."""
        self._acquire_lock()
        self._loop = asyncio.get_running_loop()
        if self.options.cleanup_orphans:
            n = await asyncio.to_thread(cleanup_orphans, self.home.sessions_dir)
            if n:
                logger.warning("stopped %d orphan runner(s)", n)
        self.db.execute(
            "UPDATE sessions SET container_status='stopped' WHERE container_status != 'stopped'"
        )
        await self.rebuild_work_index()
        try:  # NanoClaw deletes groups/global at its first start: bring it back from a copy
            await asyncio.to_thread(groupfiles.restore_global, self.home)
        except (OSError, CarapaceError) as exc:
            logger.warning("shared memory not restored: %s", exc)
        add_projection_hook(self._hook)
        callbacks = ChannelCallbacks(
            on_inbound=self._on_inbound, on_ready=self._on_channel_ready,
            on_action=self._on_action, on_status=self._on_channel_status,
        )  # fmt: skip
        for channel_type, adapter in list(self.adapters.items()):
            try:
                await adapter.start(callbacks)
            except Exception as exc:  # one adapter's failure never stops the others
                reason = str(exc) or type(exc).__name__
                logger.error("channel %s did not start: %s", channel_type, reason)
                self._on_channel_status(channel_type, "failed", reason)
                del self.adapters[channel_type]  # deliveries there fail clearly ("no adapter")
                continue
            self._on_channel_status(channel_type, "running", None)
        self._started = True
        from carapace.permissions.approvals_host import install as install_approvals

        install_approvals(self, background=background)
        self._background = background
        if background:
            if self.options.watch:
                self._start_watcher()
            self._sweep_event = asyncio.Event()
            self._spawn(self._sweep_loop())
            if self.options.sockets:
                from carapace.host.admin_server import AdminServer

                self._admin_server = AdminServer(self)
                await self._admin_server.start()
        logger.info("host started for %s; runner backend: %s; runner limits: %s",
                    self.home.root, self.backend_note, limits_mechanism())  # fmt: skip

    async def rebuild_work_index(self) -> int:
        """Index every session whose files hold work (``host/work_index.py``): what NanoClaw
        or an older carapace left behind runs without waiting for a new message. The file
        reads run in a worker thread."""
        refs = work_index.active_sessions(self.db)
        found = await asyncio.to_thread(
            work_index.scan_sessions, self.home.data_dir, refs, self.now()
        )
        items = list(found.items())
        for i in range(0, len(items), INDEX_SLICE):  # bounded transactions, the loop runs between
            work_index.apply(self.db, dict(items[i : i + INDEX_SLICE]))
            await asyncio.sleep(0)
        n = len(found)
        if n:
            logger.info("work index: %d of %d session(s) have pending work", n, len(refs))
        return n

    async def stop(self) -> None:
        if not self._started:
            return
        self._stopping = True
        self._started = False
        self._stopped.set()
        if self._admin_server is not None:
            await self._admin_server.stop()
        for channel_type, adapter in self.adapters.items():
            with contextlib.suppress(Exception):
                await adapter.stop()
            if channel_type not in self._failed_channels:  # a failure stays shown
                self._on_channel_status(channel_type, "stopped", None)
        await self.typing.stop_all()
        await self.pool.stop_all("shutdown")  # also waits for spawns in flight
        for sid in list(self._acks_due):
            with contextlib.suppress(Exception):
                await self._flush_acks(sid)
        if self.proxy is not None:
            await self.proxy.aclose()
        while self._tasks:  # drains, sweep timer, approvals pump; none can start now
            for task in list(self._tasks):
                task.cancel()
            # cancelled again until done: Python 3.11's wait_for can swallow a cancellation
            # that races with its own wake-up (the sweep timer kicked at that moment)
            done, _ = await asyncio.wait(list(self._tasks), timeout=0.5)
            for task in done:
                self._tasks.discard(task)
        self._stop_watcher()
        remove_projection_hook(self._hook)
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
        logger.info("host stopped")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self.sessions.release_all()
        if self.proxy is not None:
            self.proxy.close()
        self.delivery.outbox.close()
        self.db.close()

    async def _warn(self, agent_group_id: str, text: str) -> None:
        """A budget warning to the group's owner/admins (carapace.proxy)."""
        await budget_warning(self.db, self.adapters, agent_group_id, text, self.now())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ---------------------------------------------------------------- inbound
    async def _on_inbound(self, event: InboundEvent) -> RouteResult:
        return await self.route(event)

    async def _on_action(self, click: ButtonClick) -> ClickAnswer:
        """A card's button was pressed: the single approvals entry point decides."""
        from carapace.permissions.approvals import handle_action
        from carapace.permissions.approvals_host import HostContext

        out = handle_action(HostContext(self), click.question_id, click.value, click.user_id,
                            click.channel_type, click.platform_id, click.thread_id)  # fmt: skip
        return ClickAnswer(out.status, out.message, out.applied)

    def _on_channel_status(self, channel_type: str, state: str, detail: str | None) -> None:
        from carapace.channels.registry import record_state

        if state == "failed":
            if self._started:
                logger.error("channel %s stopped working: %s", channel_type, detail)
            self._failed_channels.add(channel_type)
        record_state(self.home, channel_type, state, detail)

    def _on_channel_ready(self, channel_type: str) -> None:
        """A reader came back (e.g. a CLI client): retry every session with waiting rows."""
        if self._stopping:
            return
        for sid in self.sessions.due_work(self.now() + timedelta(days=3650)):
            self._spawn(self._drain(sid))

    async def route(self, event: InboundEvent) -> RouteResult:
        result = await self.router.route(event, now=self.now())
        if self._background and not self._stopping:  # typing needs timers (host/typing.py)
            for r in result.routed:
                if r.trigger and r.seq is not None:
                    self.typing.start(r.session_id, event.channel_type, event.platform_id,
                                      event.thread_id)  # fmt: skip
        return result

    def _heartbeat_of(self, session_id: str) -> datetime | None:
        session = self.sessions.get(session_id)
        return heartbeat_at(self.sessions.paths(session)) if session is not None else None

    # ---------------------------------------------------------------- delivery
    async def _drain(self, session_id: str) -> int:
        r = await self.delivery.drain(session_id, self.now)
        if r.delivered:
            self.typing.stop(session_id)
        if r.next_retry is not None:
            self.sessions.mark_work(session_id, due_iso(r.next_retry) or "")
            self._kick_sweep()
        return r.delivered

    async def deliver_once(self, session_id: str | None = None) -> int:
        """One delivery pass over one session, or every session with work or a runner."""
        if session_id is not None:
            return await self._drain(session_id)
        ids = set(self.sessions.due_work(self.now() + timedelta(days=3650)))
        ids.update(self.pool.running)
        total = 0
        for sid in sorted(ids):
            total += await self._drain(sid)
        return total

    def _on_outbound_change(self, session_id: str) -> None:
        self._spawn(self._after_commit(session_id))

    async def _after_commit(self, session_id: str) -> None:
        """A runner committed: deliver what is new, note its new acks (one cheap read of
        what changed since the last one, off the loop); when work is queued for a runner
        slot, see whether this runner has become idle."""
        await self._drain(session_id)
        session = self.sessions.get(session_id)
        if session is None:
            return
        paths = self.sessions.paths(session)
        try:
            top, acks = await self.delivery.outbox.call(
                new_acks, paths.outbound, self._ack_rowid.get(session_id, -1)
            )
        except (OSError, OutboxRefused, TimeoutError):
            top, acks = 0, {}
        if top:
            self._ack_rowid[session_id] = top
        due = self._acks_due.setdefault(session_id, {})
        due.update({m: st for m, st in acks.items() if st in ("completed", "failed")})
        if len(due) >= ACK_BATCH or (due and not self.pool.is_running(session_id)):
            await self._flush_acks(session_id)
        elif due and session_id not in self._ack_timers:  # soon, together with the next few
            self._ack_timers[session_id] = asyncio.get_running_loop().call_later(
                ACK_FLUSH_S, lambda: self._spawn(self._flush_acks(session_id))
            )
        if self.pool.queued():
            self._idle_cache.pop(session_id, None)
            self._kick_idle_refresh()

    async def _flush_acks(self, session_id: str) -> None:
        """Copy the noted terminal acks into ``messages_in`` (one transaction, a worker
        thread); the sweep's full ack sync catches anything a batch has not covered."""
        timer = self._ack_timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        due = self._acks_due.pop(session_id, {})
        session = self.sessions.get(session_id)
        if due and session is not None:
            task = await asyncio.to_thread(apply_acks, self.sessions.paths(session), due)
            if task and not self._stopping:  # the sweep records the task's run
                self.sessions.mark_work(session_id, due_iso(self.now()) or "")
                self._kick_sweep()

    def _idle_since(self, session_id: str) -> datetime | None:
        """For the pool (no file access: called on the event loop): None while the session
        has due or claimed work or is not known yet (a refresh off the loop is started),
        else since when its runner has been idle."""
        if session_id not in self._idle_cache:
            self._kick_idle_refresh()
            return None
        return self._idle_cache[session_id]

    def _kick_idle_refresh(self) -> None:
        if not self._idle_refresh:
            self._idle_refresh = True
            self._spawn(self._refresh_idle())

    async def _refresh_idle(self) -> None:
        """Scan the live sessions make_room does not know about (worker thread), then let
        the pool yield idle slots to queued work."""
        await asyncio.sleep(0)
        self._idle_refresh = False
        todo = [sid for sid in self.pool.running if sid not in self._idle_cache]
        for sid in todo:
            session = self.sessions.get(sid)
            if session is None:
                continue
            started = self.pool.started_at(sid) or self.now()
            try:
                since = await self.delivery.outbox.call(
                    idle_since, self.sessions.paths(session), self.now(), started
                )
            except Exception:
                logger.exception("idle check of session %s failed", sid)
                continue
            self._idle_cache[sid] = since
        if self.pool.queued():
            self.pool.make_room()

    # ---------------------------------------------------------------- runners
    async def _prepare(self, session_id: str) -> RunnerSpec | None:
        """Before a spawn. Central-DB reads and writes stay on the event loop; the file work
        (projections, container.json, CLAUDE.md, transcript adoption) runs in a worker
        thread and writes only what changed."""
        if self._stopping:
            return None
        session = self.sessions.get(session_id)
        if session is None or (session.status or "active") != "active":
            return None
        plan = self.sessions.wake_plan(session)
        agent_dir = plan.agent_dir
        paths = self.sessions.paths(session)
        await asyncio.to_thread(self._wake_files, plan, session.id)
        if self._stopping:
            return None
        set_container_status(self.db, session.id, "running")
        self.sessions.keep(session)  # persistent connections while the runner lives
        self.db.execute(
            "UPDATE sessions SET last_active=? WHERE id=?", (due_iso(self.now()), session.id)
        )
        if self._watcher is not None:
            self._watch_session(paths.root)
        self.sessions.mark_work(
            session.id, due_iso(self.now() + timedelta(seconds=SLA_CHECK_S)) or ""
        )
        env = {"CARAPACE_TZ": self.settings.timezone, **self.options.runner_env}
        cfg = self.db.execute(
            "SELECT provider FROM container_configs WHERE agent_group_id=?",
            (session.agent_group_id,),
        ).fetchone()
        provider = session.agent_provider or (cfg[0] if cfg and cfg[0] else None)
        provider = provider or self.settings.default_provider
        if provider is None and self.proxy is not None:
            provider = self.proxy.default_provider()
        return RunnerSpec(session.id, session.agent_group_id, paths.root, agent_dir, provider,
                          self.settings.runner_idle_exit_s, env)  # fmt: skip

    def _wake_files(self, plan: Any, session_id: str) -> None:
        self.sessions.write_wake_files(plan)
        adopt_legacy_transcript(plan.agent_dir, plan.paths.root, session_id)  # out of the group
        with contextlib.suppress(FileNotFoundError):
            plan.paths.heartbeat.unlink()

    def _on_exit(self, session_id: str, exit: RunnerExit) -> None:
        self._host_seen.forget(session_id)
        self.typing.stop(session_id)
        self._idle_cache.pop(session_id, None)
        self._ack_rowid.pop(session_id, None)
        if not self._closed:
            with contextlib.suppress(sqlite3.Error):
                self.sessions.release(session_id)
        if self._acks_due.get(session_id) and not self._closed:
            self._spawn(self._flush_acks(session_id))
        if self.proxy is not None:
            self.proxy.egress.session_ended(session_id)
        if self._closed:  # claims are reset by the next start's sweep
            return
        session = self.sessions.get(session_id)
        if session is None:
            return
        now = self.now()
        with contextlib.suppress(sqlite3.Error):
            set_container_status(self.db, session_id, "stopped")
        count = exit.count_try or (exit.reason is None and exit.returncode != 0)
        h = self._health.setdefault(session_id, _SpawnHealth())
        quick = (now - exit.started_at).total_seconds() < 5 and exit.returncode != 0
        if quick and exit.reason is None:
            h.quick_exits += 1
            delay = min(SPAWN_BACKOFF_MAX_S, 2.0**h.quick_exits)
            h.not_before = now + timedelta(seconds=delay)
            logger.error("runner of session %s exited at once (code %s); next try in %.0f s",
                         session_id, exit.returncode, delay)  # fmt: skip
        elif exit.returncode == 0 or not quick:
            self._health.pop(session_id, None)
        if not self._started:
            self._release(session_id, now, count)
            return
        self._releasing.add(session_id)
        self._spawn(self._after_exit(session_id, now, count, h.not_before or now))

    def _release(self, session_id: str, now: datetime, count: bool) -> None:
        """Reset the claims a dead runner held (writes its outbound.db: schema-checked)."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        retried, failed = reset_claims(
            self.sessions.paths(session), now, self.settings.max_tries, count_try=count
        )
        if retried or failed:
            logger.warning("runner of session %s died holding %s; retried %s, failed %s",
                           session_id, retried + failed, retried, failed)  # fmt: skip

    async def _after_exit(self, session_id: str, now: datetime, count: bool, due: datetime) -> None:
        try:
            await self.delivery.outbox.call(self._release, session_id, now, count)
        finally:
            self._releasing.discard(session_id)
        self.sessions.mark_work(session_id, due_iso(due) or "")
        self._kick_sweep()
        self._on_outbound_change(session_id)

    # ---------------------------------------------------------------- sweep
    async def sweep_once(self, now: datetime | None = None) -> SweepReport:
        when = now or self.now()
        report = SweepReport()
        for sid in self.sessions.due_work(when):
            try:
                await self.sweep_session(sid, when, report)
            except Exception:
                logger.exception("sweep of session %s failed", sid)
                self.sessions.set_work(sid, due_iso(when + timedelta(seconds=SAFETY_TICK_S)))
        return report

    async def sweep_session(self, sid: str, now: datetime, report: SweepReport) -> None:
        session = self.sessions.get(sid)
        if session is None or (session.status or "active") != "active":
            self.sessions.set_work(sid, None)
            return
        paths = self.sessions.paths(session)
        if not paths.inbound.exists():
            self.sessions.set_work(sid, None)
            return
        report.visited.append(sid)
        running = self.pool.is_running(sid)
        off = self.delivery.outbox.call  # outbound.db is read off the loop, bounded
        scan = await off(scan_session, paths, now)
        if not running and scan.claims and sid not in self._releasing:
            retried, failed = await off(
                functools.partial(reset_claims, count_try=True), paths, now,
                self.settings.max_tries,
            )  # fmt: skip
            report.reset.extend(retried)
            report.failed.extend(failed)
            scan = await off(scan_session, paths, now)
        started = self.pool.started_at(sid)
        if running and started is not None:
            seen = self._host_seen
            live = [Claim(m, seen.clamp(sid, f"claim:{m}", t, now)) for m, t in scan.claims.items()
                    if t is not None and t >= started - timedelta(seconds=1)]  # fmt: skip
            beat = seen.clamp(sid, "heartbeat", heartbeat_at(paths), now)
            action, mid = decide_stuck_action(now, beat, await off(container_state, paths), live)
            if action != "ok":
                logger.warning("session %s: %s (message %s); stopping its runner", sid, action, mid)
                report.killed.append((sid, action))
                self._spawn(self.pool.stop(sid, action, count_try=True))
            elif not scan.due_now and not scan.claims and self._idle(paths, started, now):
                self._spawn(self.pool.stop(sid, "idle"))
        # the hook (task series: hand-over, catch-up) runs before the wake decision
        with self.sessions.inbound(paths) as inb:
            ctx = SweepContext(session, paths, inb, now, self.settings.timezone,
                               self.sessions.other_max(sid, inb), scan.task_acks)  # fmt: skip
            hook_next = self.hooks.on_sweep_session(ctx)
        if hook_next is not None or scan.due_now:
            scan = await off(scan_session, paths, now)
        h = self._health.get(sid)
        blocked = h is not None and h.not_before is not None and h.not_before > now
        if scan.due_now and not running and not blocked:
            self.pool.wake(sid)
            report.woken.append(sid)
        r = await self.delivery.drain(sid, lambda: now)
        if r.delivered:
            self.typing.stop(sid)
        alive = self.pool.is_running(sid)
        nxt = earliest(
            scan.next_due, hook_next, r.next_retry,
            now + timedelta(seconds=SLA_CHECK_S) if alive else None,
            h.not_before if (blocked and h is not None and scan.due_now) else None,
        )  # fmt: skip
        self.sessions.set_work(sid, due_iso(nxt))

    def sessions_inbound(self, paths: Any) -> sqlite3.Connection:
        from carapace.db.session import open_inbound

        return open_inbound(paths)

    def _idle(self, paths: Any, started: datetime, now: datetime) -> bool:
        limit = self.settings.runner_idle_exit_s
        if not limit or limit <= 0:
            return False
        hb = heartbeat_at(paths)
        last = max(started, hb) if hb is not None else started
        return (now - last).total_seconds() > 2 * limit

    async def _sweep_loop(self) -> None:
        assert self._sweep_event is not None
        # ``not self._stopping``: Python 3.11's ``wait_for`` can swallow a cancellation that
        # lands as the event is set; the loop must still end when the host stops
        while not self._stopping:
            try:
                await self.sweep_once()
            except Exception:
                logger.exception("sweep pass failed")
            nxt = self.sessions.next_work_due()
            delay = SAFETY_TICK_S
            if nxt:
                from carapace.timefmt import parse_ts

                delay = max(0.0, min(delay, (parse_ts(nxt) - self.now()).total_seconds()))
            self._sweep_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_event.wait(), delay + 0.005)

    # ---------------------------------------------------------------- watching
    def _start_watcher(self) -> None:
        try:
            from carapace.watch import DirWatcher
        except ImportError:  # pragma: no cover
            logger.warning("carapace.watch missing; delivery falls back to the sweep")
            return
        self._watcher = DirWatcher(poll_interval=0.25)
        fd = self._watcher.fileno()
        if fd is not None:
            asyncio.get_running_loop().add_reader(fd, self._on_watch)
        else:
            self._spawn(self._poll_watch())

    def _watch_session(self, root: Any) -> None:
        try:
            self._watcher.add(root, names={"outbound.db", "outbound.db-journal"})
        except Exception:
            logger.exception("cannot watch %s", root)

    def _on_watch(self) -> None:
        for path in self._watcher.drain():
            sid = path.name if path.is_dir() else path.parent.name
            if not path.exists() and path.name.startswith("sess-") and self.pool.is_running(sid):
                # the session folder was deleted under its runner, which would go on writing
                # into the deleted files: stop it; the next message starts one on a new folder
                logger.warning("session folder of %s deleted: stopping its runner", sid)
                self._spawn(self.pool.stop(sid, "session folder deleted"))
                continue
            self._on_outbound_change(sid)

    async def _poll_watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._on_watch()

    def _stop_watcher(self) -> None:
        if self._watcher is None:
            return
        fd = self._watcher.fileno()
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
        self._watcher.close()
        self._watcher = None

    # ---------------------------------------------------------------- admin
    async def _admin_call(self, frame: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        from carapace.host.admin_server import dispatch_in_thread

        return await asyncio.to_thread(dispatch_in_thread, self, asyncio.get_running_loop(), frame,
                                       caller)  # fmt: skip
