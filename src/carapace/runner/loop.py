"""The runner's main loop: wait for inbound work, claim a batch, run a turn, ack it.

::

    start: release stale claims (recover), touch .heartbeat, load the conversation
    loop:
      rows  = due pending rows of inbound.db            (fresh read-only connection)
      sel   = select_batch(rows minus our acks)          (batching.py)
      ack late answers / aged context  completed
      no batch -> wait for an inbound commit (inotify), the next process_after, or 5 s;
                  exit after --idle-exit seconds without work
      claim batch (processing)
      /clear rows -> "Session cleared.", conversation dropped, completed
      turn    -> reply rows + completed acks + conversation, in ONE outbound transaction
      failure -> "Sorry — the model provider failed: …" to the origin, acks failed
      SIGTERM -> idle: exit; in a turn: abandon at the next step, release the claims

Claims are completed only after the agent has handled the batch (NanoClaw completed
follow-ups when pushed, W-3); messages arriving during a turn are the next batch. A crash
anywhere leaves ``processing`` claims that the next runner's ``recover`` releases, so the
batch is answered again (at most one duplicate per crash, and none when the crash comes
after the final transaction).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from datetime import datetime
from types import FrameType

from carapace.db.session import touch_heartbeat
from carapace.errors import CarapaceError
from carapace.limits import limits_of, rlimit_preexec
from carapace.log import get_logger
from carapace.runner.agent import Agent, append_transcript, resume_conversation, save_conversation
from carapace.runner.batching import select_batch
from carapace.runner.compaction import Compaction
from carapace.runner.config import RunnerConfig
from carapace.runner.conversation_store import ConversationStore
from carapace.runner.formatter import format_messages, is_clear_command
from carapace.runner.images import collect_images, describe
from carapace.runner.inbound import Inbound, InRow, Poll
from carapace.runner.keepalive import Keepalive
from carapace.runner.outbound import Outbound
from carapace.runner.preview import PreviewWriter
from carapace.runner.prompt import FileCache, compose_system_prompt
from carapace.runner.providers._common import one_line
from carapace.runner.providers.base import Provider
from carapace.runner.reply import dispatch_final_text, reply_routing, send_text
from carapace.runner.task_scripts import SCRIPT_TIMEOUT_S, apply_pre_task_scripts, has_script
from carapace.runner.tools import Batch, ToolBox, ToolContext, TurnAbandoned
from carapace.timefmt import Clock, SystemClock
from carapace.watch import DirWatcher, FolderWatch

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


logger = get_logger(__name__)

INBOUND_NAMES = ("inbound.db", "inbound.db-journal")
CLEARED_TEXT = "Session cleared."
ERROR_TEXT = "Sorry — the model provider failed: {detail}"
TERMINAL_ACKS = ("completed", "failed")
FINISHED_MAX = 4096  # finished ids remembered at most (the host copies acks every 64 or 1 s)


class Runner:
    """Serves one session until idle-exit, SIGTERM or ``stop()``."""

    def __init__(
        self,
        config: RunnerConfig,
        provider: Provider | None,
        *,
        provider_error: str | None = None,
        clock: Clock | None = None,
        workspace: Any = None,
        watcher: DirWatcher | None = None,
        mcp: Any = None,
    ) -> None:
        self.config = config
        self.paths = config.paths
        self.provider = provider
        self.provider_error = provider_error
        self.clock: Clock = clock or SystemClock()
        self.inbound = Inbound(self.paths)
        self.outbound = Outbound(self.paths, inbound_max=self._inbound_max)
        self.conversation_store = ConversationStore()  # what is saved (rows per message)
        self.watcher = watcher or DirWatcher(poll_interval=1.0)
        self._stop = threading.Event()
        self._signalled = 0  # the SIGTERM/SIGINT received (the handler sets only this)
        self._on_wake_visible: set[str] | None = None
        # ids with a terminal ack ("completed"/"failed": never taken again), still pending
        # in inbound.db until the host copies the acks there (in batches): not decoded nor
        # looked up again at every poll (a cache: cleared past FINISHED_MAX)
        self._finished: set[str] = set()
        self.ctx = ToolContext(
            config=config,
            inbound=self.inbound,
            outbound=self.outbound,
            now=self.clock.now,
            heartbeat=self.heartbeat,
            wait=self._wait_inbound,
            should_stop=self.stopping,
            workspace=workspace,
        )
        self.mcp = mcp
        self.keepalive = Keepalive(self.heartbeat, claims=self.outbound.claims)
        # the memory files, read again only when changed (their folders watched)
        self.memory_files = FileCache(watch=FolderWatch(self.watcher))  # (its inotify)
        # (wall-clock start of the process's main module, its imports s, set-up s): set
        # by __main__, logged once the runner is ready (``carapace bench runner`` reads it)
        self.startup: tuple[float, float, float] | None = None
        self.toolbox = ToolBox(self.ctx, workspace, mcp)
        self.agent = Agent(
            provider or _FailingProvider(provider_error or "no provider"),
            self.toolbox,
            max_tool_rounds=config.max_tool_rounds,
            heartbeat=self.heartbeat,
            should_stop=self.stopping,
            context_limit_chars=config.agent_settings.context_limit_chars,
            history_messages=config.history_messages,
            on_compaction=self._on_compaction,
        )

    # --- life cycle -----------------------------------------------------------------------

    def heartbeat(self) -> None:
        try:
            touch_heartbeat(self.paths)
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()

    def stopping(self) -> bool:
        return self._signalled != 0 or self._stop.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # runs in the main thread between any two bytecodes, maybe inside a write to
        # stderr (logging there again raised, and the signal was lost: the runner served
        # on) or inside a lock: it only notes the signal. The wait for inbound rows returns
        # at once: the C-level handler writes to the wake-up pipe the watcher selects on.
        self._signalled = signum

    def install_signal_handlers(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.watcher.interrupt_on(r)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _wait_inbound(self, timeout: float) -> None:
        self.watcher.wait(timeout)

    def start(self) -> None:
        released = self.outbound.recover()
        if released:
            logger.info("released %d stale processing claim(s) of a previous runner", released)
        self.agent.conversation = resume_conversation(
            self.outbound,
            self.paths.root,
            self.config.session_id,
            self.config.history_messages,
            self.config.agent_dir,
            store=self.conversation_store,
        )
        if self.agent.conversation:
            logger.info("resuming conversation (%d messages)", len(self.agent.conversation))
        self.heartbeat()
        self.watcher.add(self.paths.root, names=INBOUND_NAMES, settle=True)

    def run(self) -> int:
        """The main loop; returns the exit code."""
        logger.info(
            "runner starting: session %s, provider %s",
            self.config.session_id,
            getattr(self.provider, "name", None) or f"(failed: {self.provider_error})",
        )
        t0 = time.perf_counter()
        self.start()
        if self.startup is not None:
            at, imports, setup = self.startup
            logger.info("runner ready: imports %.1f ms, set-up %.1f ms, start %.1f ms "
                        "(main module at %.6f)", imports * 1000, setup * 1000,
                        (time.perf_counter() - t0) * 1000, at)  # fmt: skip
        last_work = time.monotonic()
        try:
            while not self.stopping():
                worked = self.step()
                if self.stopping():
                    break
                if worked:
                    last_work = time.monotonic()
                    continue
                timeout = self.config.poll_interval_s
                if self.config.idle_exit_s is not None:
                    idle_left = self.config.idle_exit_s - (time.monotonic() - last_work)
                    if idle_left <= 0:
                        logger.info("idle for %.1fs: exiting", self.config.idle_exit_s)
                        break
                    timeout = min(timeout, idle_left)
                due = self.inbound.next_due(self.clock.now())
                if due is not None:
                    timeout = min(timeout, max(0.01, (due - self.clock.now()).total_seconds()))
                self.watcher.wait(timeout)
        finally:
            self.close()
        if self._signalled:
            logger.info("signal %d: stopped", self._signalled)
        logger.info("runner stopped: session %s", self.config.session_id)
        return 0

    def close(self) -> None:
        self.keepalive.close()
        if self.mcp is not None:
            self.mcp.close()
        self.watcher.close()
        self.memory_files.close()
        self.outbound.close()
        self.inbound.close()

    def _inbound_max(self) -> int:
        try:
            return self.inbound.known_max()
        except sqlite3.Error:
            return 0

    # --- one iteration --------------------------------------------------------------------

    def step(self, now: datetime | None = None) -> bool:
        """Poll once and process at most one batch; True if anything was done."""
        now = now or self.clock.now()
        if len(self._finished) > FINISHED_MAX:
            self._finished.clear()
        poll = self.inbound.poll(now, skip=self._finished)
        if poll.pending is not None and self._finished:
            # a finished id no longer pending was copied by the host: not skipped any more
            # (the next poll reads the due rows whole in one query, not ids then rows)
            self._finished.intersection_update(poll.pending)
        rows = poll.rows
        first_poll = self._on_wake_visible is None
        if first_poll:
            self._on_wake_visible = {r.id for r in rows if r.on_wake}
        acks = self.outbound.acked(r.id for r in rows)
        self._finished.update(i for i, st in acks.items() if st in TERMINAL_ACKS)
        acked = set(acks)
        sel = select_batch(
            rows,
            acked,
            limit=self.config.max_messages_per_prompt,
            on_wake_visible=None if first_poll else self._on_wake_visible,
        )
        done = [*sel.late, *sel.aged]
        if done:
            for r in sel.late:
                logger.info("acking late %s row %s", r.data.get("type"), r.id)
            for r in sel.aged:
                logger.info("context row %s aged out of the batch window", r.id)
            self.outbound.complete([r.id for r in done], now=now)
        if not sel.batch or sel.trigger is None:
            return bool(done)
        self.process(sel.batch, sel.trigger, poll)
        return True

    def process(self, rows: list[InRow], trigger: InRow, poll: Poll) -> None:
        """Claim the batch, then run it under the keepalive (which also commits the claim
        once the turn has lasted, runner/claims.py). ``poll``: the read the rows came from
        (its destinations and routing serve the turn)."""
        ids = [r.id for r in rows]
        self.outbound.claim(ids, now=self.clock.now())
        with self.keepalive:
            self._run_batch(rows, trigger, ids, poll)

    def _run_batch(self, rows: list[InRow], trigger: InRow, ids: list[str],
                   poll: Poll) -> None:  # fmt: skip
        sid = self.config.session_id
        batch = Batch(in_reply_to=trigger.id, origin=trigger.routing, ids=tuple(ids))
        if batch.origin.empty:
            batch.origin = poll.routing
        self.ctx.batch = batch
        clears = [r for r in rows if is_clear_command(r)]
        if clears:
            self._clear(clears, batch)
            rows = [r for r in rows if r not in clears]
            if not rows or not any(r.trigger for r in rows):
                self.outbound.complete([r.id for r in rows], now=self.clock.now())
                return
        rows, skipped = self._task_scripts(rows, batch)
        if skipped:
            self.outbound.complete([r.id for r in skipped], now=self.clock.now())
            if not rows or not any(r.trigger for r in rows):
                self.outbound.complete([r.id for r in rows], now=self.clock.now())
                return
        ids = [r.id for r in rows]
        kinds = ",".join(sorted({r.kind for r in rows}))
        # (debug: the line after the turn says it all, and a turn that fails or is abandoned
        # is logged with its ids; a log line costs ~30 µs here, on every warm round trip)
        logger.debug(
            "session %s: processing %d message(s) %s (kinds: %s)", sid, len(ids), ids, kinds
        )
        dests = poll.destinations  # as the turn starts (a reply's blocks: when written)
        prompt = format_messages(
            rows,
            self.config.timezone,
            _origin_lookup(dests),
            session_dir=self.paths.root,
        )
        images = collect_images(rows, self.paths.root)
        if images.skipped:
            prompt = f"{prompt}\n\n{images.note()}"
        if images.images and not self.config.agent_settings.images:  # a text-only model
            prompt = f"{prompt}\n\n{describe(images.images, 'images are off for this group')}"
            images.images = []
        system = compose_system_prompt(
            self.config.agent_dir,
            dests,
            self.config.assistant_name,
            settings=self.config.agent_settings if self.toolbox.workspace is not None else None,
            session_dir=self.paths.root,
            sandboxed=self.config.sandboxed,
            memory=not getattr(self.agent.provider, "loads_memory_files", False),
            tool_names=getattr(self.agent.provider, "prompt_tool_names", None),
            files=self.memory_files,
        )
        if self.mcp is not None:
            system = f"{system}\n\n{self.mcp.prompt_section()}"
        preview = self._preview(batch)
        self.agent.on_text = preview.update if preview is not None else None
        try:
            result = self.agent.run_turn(system, prompt, images.images)
        except TurnAbandoned as exc:
            logger.info("session %s: turn abandoned (%s); releasing %s", sid, exc, ids)
            if preview is not None:
                preview.abandon()
            self.outbound.release(ids)
            return
        except Exception as exc:
            detail = one_line_error(exc)
            if isinstance(exc, CarapaceError):
                logger.error("session %s: provider failed on %s: %s", sid, ids, detail)
            else:
                logger.exception("session %s: turn failed on %s", sid, ids)
            replied = self._fail(ids, batch, detail, preview.reply_id if preview else None)
            if preview is not None:  # the error message replaces what was shown
                preview.finish(reply=replied)
            return
        finally:
            self.agent.on_text = None
        plain: list[str] = []
        with self.outbound.atomic():
            seqs = dispatch_final_text(
                result.text, batch, self.inbound, self.outbound, self.clock.now,
                reply_id=preview.reply_id if preview is not None else None, plain_ids=plain,
            )  # fmt: skip
            self.outbound.complete(ids, now=self.clock.now())
            self.agent.accept(result)
            save_conversation(self.outbound, self.agent.conversation,
                              self.config.history_messages, self.agent.encoded,
                              self.conversation_store)  # fmt: skip
        if preview is not None:
            preview.finish(reply=bool(plain))
        append_transcript(self.paths.root, sid, result.messages, encoded=self.agent.encoded)
        logger.info(
            "session %s: completed %s (kinds: %s) in %d round(s); reply seqs %s",
            sid, ids, kinds, result.rounds, seqs,
        )  # fmt: skip

    def _preview(self, batch: Batch) -> PreviewWriter | None:
        """A writer of the turn's reply as it is written, when the chat it answers is on a
        channel the host shows previews on and the provider streams."""
        if not self.config.stream_channels:
            return None
        provider = self.agent.provider
        if getattr(provider, "complete_stream", None) is None and not getattr(
            provider, "streams_turns", False
        ):
            return None
        routing = reply_routing(batch, self.inbound)
        if routing.empty or routing.channel_type not in self.config.stream_channels:
            return None
        return PreviewWriter(self.paths.outbox, batch.reply_id(), routing)

    def _task_scripts(self, rows: list[InRow], batch: Batch) -> tuple[list[InRow], list[InRow]]:
        """Pre-task scripts run exactly as bash does: same policy, env, limits (or not at all)."""
        if not any(has_script(r) for r in rows):
            return rows, []  # (the policy, environment and limits are made only for one)
        ws = self.toolbox.workspace
        mode, _why = self.config.agent_settings.bash_mode(self.config.sandboxed)
        allowed = ws is not None and mode != "off" and ws.policy.bash != "off"
        limits = limits_of(self.config.settings)

        def notify(row: InRow, text: str) -> None:
            routing = row.routing if not row.routing.empty else batch.origin
            send_text(text, routing, self.outbound, in_reply_to=row.id, now=self.clock.now(),
                      id=f"{Batch(in_reply_to=row.id).stable_id()}-script")  # fmt: skip

        return apply_pre_task_scripts(
            rows, cwd=self.config.agent_dir, outbound=self.outbound, now=self.clock.now,
            heartbeat=self.heartbeat, allowed=allowed,
            env=ws.bash_env() if ws is not None else None,
            preexec=ws.command_preexec() if ws is not None else rlimit_preexec(limits, cpu=True),
            timeout=min(SCRIPT_TIMEOUT_S, limits.tool_timeout_s), notify=notify,
        )  # fmt: skip

    def _on_compaction(self, result: Compaction) -> None:
        # A compaction sends nothing (no messages_out row): it is only recorded (spec W-3b).
        append_transcript(self.paths.root, self.config.session_id, [result.record()])

    def _clear(self, rows: list[InRow], batch: Batch) -> None:
        with self.outbound.atomic():
            self.agent.clear()
            save_conversation(self.outbound, [], self.config.history_messages,
                              store=self.conversation_store)  # fmt: skip
            for row in rows:
                routing = row.routing if not row.routing.empty else batch.origin
                send_text(
                    CLEARED_TEXT, routing, self.outbound, in_reply_to=row.id, now=self.clock.now()
                )
            self.outbound.complete([r.id for r in rows], now=self.clock.now())
        append_transcript(self.paths.root, self.config.session_id, [{"type": "clear"}])
        logger.info("session %s: conversation cleared by %s", self.config.session_id, rows[0].id)

    def _fail(self, ids: list[str], batch: Batch, detail: str, reply_id: str | None = None) -> bool:
        """The error told to the chat (with ``reply_id`` when a preview showed the turn) and
        the claims failed; True when an error row was written."""
        routing = reply_routing(batch, self.inbound)
        with self.outbound.atomic():
            if not routing.empty:
                send_text(
                    ERROR_TEXT.format(detail=detail),
                    routing,
                    self.outbound,
                    in_reply_to=batch.in_reply_to,
                    now=self.clock.now(),
                    answers=batch.answers() if routing.same_chat(batch.origin) else None,
                    id=reply_id,
                )
            self.outbound.fail(ids, now=self.clock.now())
        return not routing.empty


def one_line_error(exc: BaseException) -> str:
    text = one_line(str(exc))
    return text or type(exc).__name__


def _origin_lookup(dests: list[Any]) -> Any:
    def lookup(channel_type: str | None, platform_id: str | None) -> str | None:
        if not channel_type or not platform_id:
            return None
        for d in dests:
            if channel_type == "agent":
                if d.type == "agent" and d.agent_group_id == platform_id:
                    return str(d.name)
            elif (
                d.type == "channel"
                and d.channel_type == channel_type
                and d.platform_id == platform_id
            ):
                return str(d.name)
        return None

    return lookup


class _FailingProvider:
    """Stands in when the configured provider could not be created: every turn fails."""

    name = "unavailable"

    def __init__(self, error: str) -> None:
        self.error = error

    def complete(self, system: str, messages: list[Any], tools: list[Any]) -> Any:
        from carapace.errors import ProviderError

        raise ProviderError(self.error)
