"""The ``Host``: one asyncio process wiring channels, router, sessions, runners, delivery
and the sweep together (DESIGN §2). Also the Python API for tests (DESIGN §6)::

    host = Host(home, clock=FakeClock(), channels=[FakeChannel()], backend=FakeBackend())
    await host.start(background=False)        # no timers, no sockets: drive it by hand
    await host.route(event); await host.deliver_once(); await host.sweep_once(now)

Hooks for other modules: ``host.hooks.on_sweep_session(ctx)`` (recurrence, called once per
swept session that has a task or a recurring row), ``host.router.on_sender_approval`` / ``on_channel_request`` (approvals),
``host.actions.register(action, handler)`` (system actions).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from carapace.bootstrap import open_home
from carapace.channels.base import (
    ButtonClick,
    ChannelAdapter,
    ClickAnswer,
    InboundEvent,
)
from carapace.config import Home, Settings
from carapace.db.session import SessionPaths
from carapace.errors import ConfigError, no_space
from carapace.host import (
    host_lifecycle,
    host_projection,
    host_runners,
    host_sweep,
)
from carapace.host.actions import SystemActions
from carapace.host.checkpointer import Checkpointer
from carapace.host.delivery import Delivery
from carapace.host.host_runners import SpawnHealth
from carapace.host.ingest import Ingest
from carapace.host.ingest_journal import IngestJournal
from carapace.host.pool import RunnerPool
from carapace.host.router import Router, RouteResult
from carapace.host.send_intents import FILE_NAME as INTENTS_FILE
from carapace.host.send_intents import SendIntents
from carapace.host.sessions import SessionManager
from carapace.host.sweep import (
    HostSeen,
    SweepReport,
    due_iso,
    heartbeat_at,
)
from carapace.perms import private_umask
from carapace.proxy.hostside import HostProxy, budget_warning
from carapace.sandbox.process import (
    RunnerBackend,
    RunnerExit,
    RunnerSpec,
)
from carapace.timefmt import Clock, SystemClock

if TYPE_CHECKING:
    from carapace.host.admin_server import AdminDispatch

logger = logging.getLogger(__name__)


@dataclass
class HostHooks:
    # Callable[[SweepContext], datetime | None], called for a swept session with a task or
    # a recurring row; None = the task series (host/task_runs.py)
    on_sweep_session: Any = None


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

            self.hooks.on_sweep_session = SeriesSweep(self.db, home.central_db)
        self.adapters: dict[str, ChannelAdapter] = {c.channel_type: c for c in channels}
        self.sessions = SessionManager(home, self.db)
        # a routed message is acknowledged once journaled here (host/ingest.py, issue 19)
        self.sessions.ingest = Ingest(self.sessions, IngestJournal(home.ingest_journal))
        self.sessions.ingest.on_landed = self._posted_landed
        self.sessions.on_folder_remade = self._on_folder_remade
        self._checkpointer: Checkpointer | None = None
        self.proxy: HostProxy | None = None
        try:
            from carapace.host.preview import check_stream_settings

            check_stream_settings(self.settings.extra)  # [channels.<type>] stream_replies
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
        self.delivery = Delivery(
            self.db,
            self.sessions,
            self.adapters,
            self.actions,
            self.wake,
            SendIntents(self.home.data_dir / INTENTS_FILE),
        )
        self.delivery.ride_along = functools.partial(host_runners.acks_ride_along, self)
        self.delivery.ride_along_now = functools.partial(host_runners.acks_ride_along_now, self)
        self.sessions.carry = self.delivery.hold.carry
        self.router = Router(self.db, self.sessions, self.adapters, self.wake)
        from carapace.host.typing import TypingKeeper

        self.typing = TypingKeeper(self.adapters, self._heartbeat_of, self.now)
        from carapace.host.preview import PreviewKeeper

        self.previews = PreviewKeeper(
            self.db, self.sessions, self.adapters, self.settings.extra,
            is_running=self.pool.is_running, heartbeat_age=self._heartbeat_age,
            open_inbound=self.delivery._open, now=self.now,
        )  # fmt: skip
        self.delivery.previews = self.previews
        self._background = False
        self._failed_channels: set[str] = set()
        self._health: dict[str, SpawnHealth] = {}
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
        # filled off the event loop (host_runners.refresh_idle); a session with work drops its entry
        self._idle_cache: dict[str, datetime | None] = {}
        self._idle_refresh = False  # a refresh task is on its way
        self._last_commit: dict[str, datetime] = {}  # a live runner's last commit, host clock
        self._work_seen: dict[str, int] = {}  # bumped with each sign of work (stale scans)
        self._runner_paths: dict[str, SessionPaths] = {}  # of the live runners (idle scans)
        # terminal acks read after runner commits, copied into messages_in in batches
        self._ack_rowid: dict[str, int] = {}
        self._acks_due: dict[str, dict[str, str]] = {}
        self._ack_timers: dict[str, asyncio.TimerHandle] = {}
        self._noting: dict[str, asyncio.Future[None]] = {}  # acks being read (after_commit)

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
        """A destination or wiring change: projected into the group's live sessions
        (host/host_projection.py); the others project on wake."""
        host_projection.on_change(self, db, agent_group_id)

    async def projection_idle(self) -> None:
        """Wait until the projections started so far are written (benchmarks, tests)."""
        while self._projecting:
            await asyncio.gather(*list(self._projecting), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        if self._stopping:
            coro.close()
            return
        self._keep(asyncio.get_running_loop().create_task(coro))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """A task of the host's own: waited for or cancelled by its stop, its failure logged."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            if no_space(exc):  # one line: it recurs until there is room again
                logger.error("background task failed (no space left): %s", exc)
            else:
                logger.error("background task failed", exc_info=exc)

    def wake(self, session_id: str) -> None:
        if self._stopping:  # the row is on disk: the next start's sweep picks it up
            return
        h = self._health.get(session_id)
        if h is not None and h.not_before is not None and h.not_before > self.now():
            self.sessions.work.mark(session_id, due_iso(h.not_before) or "")
            self._kick_sweep()
            return
        host_runners.work_seen(self, session_id)  # it has work now
        if self.pool.is_running(session_id):
            return  # its runner wakes on the commit itself (inotify); the sweep is not needed
        self.pool.wake(session_id)
        self._kick_sweep()

    def _posted_landed(self, session_id: str, acts: bool) -> None:
        """A row the host posted is in its session's file: the wake its caller gave came
        before it was (a runner that ended meanwhile had nothing to look for), so the
        session is woken again; a row no runner acts on now has the sweep index it."""
        if acts:
            self.wake(session_id)
        else:
            self._kick_sweep()

    def _kick_sweep(self) -> None:
        if self._sweep_event is not None:
            self._sweep_event.set()

    def _on_folder_remade(self, session_id: str) -> None:
        """A session folder was deleted under a live runner, which would go on reading and
        writing the deleted files: stop it; its exit wakes the session on the new folder.
        (What the host kept of the old files is keyed by the folder's generation, which
        ``SessionWriters.replaced`` moved: it is never taken for the new files'.) The
        new ``outbound.db``'s acks are read from its first row: its rowids start again."""
        self._ack_rowid.pop(session_id, None)
        if self.pool.is_running(session_id) and not self._stopping:
            logger.warning("session folder of %s was deleted: stopping its runner", session_id)
            self._spawn(self.pool.stop(session_id, "session folder deleted"))

    # ---------------------------------------------------------------- lifecycle
    async def start(self, *, background: bool = True) -> None:
        """Take the home's lock, reap orphans, start channels, watcher, sweep and sockets.
        ``background=False`` (tests): no timers or watchers; drive the passes by hand."""
        await host_lifecycle.start(self, background)

    async def rebuild_work_index(self) -> int:
        """Index every session whose files hold work (``host/work_index.py``)."""
        return await host_lifecycle.rebuild_work_index(self)

    async def stop(self) -> None:
        await host_lifecycle.stop(self)

    def close(self) -> None:
        host_lifecycle.close(self)

    async def _warn(self, agent_group_id: str, text: str) -> None:
        """A budget warning to the group's owner/admins (carapace.proxy)."""
        await budget_warning(self.db, self.adapters, agent_group_id, text, self.now())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ---------------------------------------------------------------- inbound
    async def _on_inbound(self, event: InboundEvent) -> RouteResult:
        return await self.route(event, settle=False)

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
        for sid in self.sessions.work.due(self.now() + timedelta(days=3650)):
            self._spawn(self._drain(sid))

    async def route(self, event: InboundEvent, *, settle: bool = True) -> RouteResult:
        """Route one event; returns once its rows are durable. A channel's events
        (``settle=False``) are acknowledged once journaled and written into their sessions'
        files right after; by default this also waits until they are there (and any
        refusal is in the result), with the rows the host stored on its way (an answer to
        a question, a note to an agent)."""
        result = await self.router.route(event, now=self.now())
        if settle:
            await self.sessions.settle([r.session_id for r in result.routed], posted=True)
        if self._background and not self._stopping:  # typing needs timers (host/typing.py)
            for r in result.routed:
                if r.trigger:
                    self.typing.start(r.session_id, event.channel_type, event.platform_id,
                                      event.thread_id)  # fmt: skip
                    self.previews.start(r.session_id, event.channel_type)
        return result

    def _heartbeat_age(self, session_id: str) -> float | None:
        beat = self._heartbeat_of(session_id)
        return (self.now() - beat).total_seconds() if beat is not None else None

    def _heartbeat_of(self, session_id: str) -> datetime | None:
        session = self.sessions.get(session_id)
        return heartbeat_at(self.sessions.paths(session)) if session is not None else None

    # ---------------------------------------------------------------- delivery
    async def _drain(self, session_id: str) -> int:
        r = await self.delivery.drain(session_id, self.now)
        if r.delivered:
            self.typing.stop(session_id)
        if r.next_retry is not None:
            self.sessions.work.mark(session_id, due_iso(r.next_retry) or "")
            self._kick_sweep()
        return r.delivered

    async def deliver_once(self, session_id: str | None = None) -> int:
        """One delivery pass over one session, or every session with work or a runner
        (a driver's step: the rows the pass stored, notes to agents and their messages
        to each other, are in their files when it returns)."""
        if session_id is not None:
            total = await self._drain(session_id)
        else:
            ids = set(self.sessions.work.due(self.now() + timedelta(days=3650)))
            ids.update(self.pool.running)
            total = 0
            for sid in sorted(ids):
                total += await self._drain(sid)
        await self.delivery.hold.flush_all()  # the outcomes too (host/delivery_hold.py)
        await self.sessions.settle()
        return total

    def _on_outbound_change(self, session_id: str) -> None:
        self.pool.runner_ready(session_id)  # it committed: it is up (its start-gate place)
        self._spawn(host_runners.after_commit(self, session_id))

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
            self._spawn(host_runners.refresh_idle(self))

    # ---------------------------------------------------------------- runners
    # (host_runners.py: preparing a spawn, and what a runner's exit leaves to do)
    async def _prepare(self, session_id: str) -> RunnerSpec | None:
        return await host_runners.prepare(self, session_id)

    def _on_exit(self, session_id: str, exit: RunnerExit) -> None:
        host_runners.on_exit(self, session_id, exit)

    def _release(self, session_id: str, now: datetime, count: bool) -> None:
        host_runners.release(self, session_id, now, count)

    # ---------------------------------------------------------------- sweep
    # (host_sweep.py: the per-session sweep pass and its loop)
    async def sweep_once(self, now: datetime | None = None) -> SweepReport:
        return await host_sweep.sweep_once(self, now)

    async def sweep_session(self, sid: str, now: datetime, report: SweepReport) -> None:
        await host_sweep.sweep_session(self, sid, now, report)

    def sessions_inbound(self, paths: Any) -> sqlite3.Connection:
        return host_sweep.sessions_inbound(self, paths)

    async def _sweep_loop(self) -> None:
        await host_sweep.sweep_loop(self)

    # ---------------------------------------------------------------- admin
    async def _admin_call(self, frame: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        from carapace.host.admin_server import dispatch_in_thread

        return await asyncio.to_thread(dispatch_in_thread, self, asyncio.get_running_loop(), frame,
                                       caller)  # fmt: skip
