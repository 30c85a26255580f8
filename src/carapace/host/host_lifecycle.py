"""The host's start and stop (``Host.start``/``stop``/``close``): the home's lock, the
leftovers of hosts that are gone (orphan runners, cgroups, temp folders), the work index
and the ingest journal's replay before any channel or runner, then channels, watcher,
sweep and sockets; at stop the same in reverse, every write submitted on disk before the
lock is let go."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from typing import TYPE_CHECKING

from carapace.channels.base import ChannelCallbacks
from carapace.db.destinations import add_projection_hook, remove_projection_hook
from carapace.errors import CarapaceError, ConfigError
from carapace.host import groupfiles, host_runners, host_watch, work_index
from carapace.host.checkpointer import Checkpointer
from carapace.host.pool import cleanup_orphans
from carapace.limits import mechanism as limits_mechanism
from carapace.limits import sweep_cgroups
from carapace.sandbox.process import compile_runner_code, sweep_tmp_dirs

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger("carapace.host.host")

INDEX_SLICE = 200  # work-index rows written per transaction at start


class HostRunning(ConfigError):
    code = "host-running"


def acquire_lock(host: Host) -> None:
    host.home.data_dir.mkdir(parents=True, exist_ok=True)
    fh = open(host.home.pid_file, "a+")  # noqa: SIM115 - held for the host's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise HostRunning(f"a host is already running for {host.home.root}")
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    host._lock_fh = fh


async def start(host: Host, background: bool) -> None:
    """Take the home's lock, reap orphans, start channels, watcher, sweep and sockets.
    ``background=False`` (tests): no timers or watchers; drive the passes by hand."""
    acquire_lock(host)
    host._loop = asyncio.get_running_loop()
    if host.options.cleanup_orphans:
        n = await asyncio.to_thread(cleanup_orphans, host.home.sessions_dir)
        if n:
            logger.warning("stopped %d orphan runner(s)", n)
        n = await asyncio.to_thread(sweep_cgroups)
        n_tmp = await asyncio.to_thread(sweep_tmp_dirs)
        if n or n_tmp:
            logger.info("removed %d runner cgroup(s) and %d runner temp folder(s) left by "
                        "hosts that are gone", n, n_tmp)  # fmt: skip
    host.db.execute(
        "UPDATE sessions SET container_status='stopped' WHERE container_status != 'stopped'"
    )
    if host.proxy is not None:  # its socket folder, and the removal of ended hosts' ones
        await asyncio.to_thread(host.proxy.egress.socket_dir)
    await host.rebuild_work_index()
    # messages acknowledged but not yet in their sessions' files when the last host
    # died: written now, before any channel or runner starts
    assert host.sessions.ingest is not None
    await host.sessions.ingest.replay(host.now())
    host._spawn(asyncio.to_thread(compile_runner_code))  # runners import, never compile
    try:  # NanoClaw deletes groups/global at its first start: bring it back from a copy
        await asyncio.to_thread(groupfiles.restore_global, host.home)
    except (OSError, CarapaceError) as exc:
        logger.warning("shared memory not restored: %s", exc)
    groupfiles.log_unavailable_providers(host.db)  # never served by another provider
    add_projection_hook(host._hook)
    callbacks = ChannelCallbacks(
        on_inbound=host._on_inbound, on_ready=host._on_channel_ready,
        on_action=host._on_action, on_status=host._on_channel_status,
    )  # fmt: skip
    for channel_type, adapter in list(host.adapters.items()):
        try:
            await adapter.start(callbacks)
        except Exception as exc:  # one adapter's failure never stops the others
            reason = str(exc) or type(exc).__name__
            logger.error("channel %s did not start: %s", channel_type, reason)
            host._on_channel_status(channel_type, "failed", reason)
            del host.adapters[channel_type]  # deliveries there fail clearly ("no adapter")
            continue
        host._on_channel_status(channel_type, "running", None)
    host._started = True
    from carapace.permissions.approvals_host import install as install_approvals

    install_approvals(host, background=background)
    host._background = background
    if background:
        # WAL checkpoints (a copy and an fsync) off the loop's central-DB commits
        from carapace.permissions.cards import kick as kick_cards

        # and its thread tells the card pump of the central DB's changes (no poll of its own)
        host._checkpointer = Checkpointer(host.home.central_db, host.db, on_change=kick_cards)
        await host._checkpointer.start_async()
        if host.options.watch:
            host_watch.start(host)
        host._sweep_event = asyncio.Event()
        host._spawn(host._sweep_loop())
        if host.options.sockets:
            from carapace.host.admin_server import AdminServer

            host._admin_server = AdminServer(host)
            await host._admin_server.start()
    mechanism = await asyncio.to_thread(limits_mechanism)  # may run systemctl: not on the loop
    logger.info("host started for %s; runner backend: %s; runner limits: %s",
                host.home.root, host.backend_note, mechanism)  # fmt: skip


async def rebuild_work_index(host: Host) -> int:
    """Index every session whose files hold work (``host/work_index.py``): what NanoClaw
    or an older carapace left behind runs without waiting for a new message. The file
    reads run in a worker thread."""
    refs = work_index.active_sessions(host.db)
    found = await asyncio.to_thread(work_index.scan_sessions, host.home.data_dir, refs, host.now())
    items = list(found.items())
    for i in range(0, len(items), INDEX_SLICE):  # bounded transactions, the loop runs between
        work_index.apply(host.db, dict(items[i : i + INDEX_SLICE]))
        await asyncio.sleep(0)
    n = len(found)
    if n:
        logger.info("work index: %d of %d session(s) have pending work", n, len(refs))
    return n


async def stop(host: Host) -> None:
    if not host._started:
        return
    host._stopping = True
    host._started = False
    host._stopped.set()
    if host._admin_server is not None:
        await host._admin_server.stop()
    for channel_type, adapter in host.adapters.items():
        with contextlib.suppress(Exception):
            await adapter.stop()
        if channel_type not in host._failed_channels:  # a failure stays shown
            host._on_channel_status(channel_type, "stopped", None)
    await host.typing.stop_all()
    await host.previews.stop_all()
    await host.pool.stop_all("shutdown")  # also waits for spawns in flight
    for sid in list(host._acks_due):
        with contextlib.suppress(Exception):
            await host_runners.flush_acks(host, sid)
    if host.proxy is not None:
        await host.proxy.aclose()
    while host._tasks:  # drains, sweep timer, approvals pump; none can start now
        for task in list(host._tasks):
            task.cancel()
        # cancelled again until done: Python 3.11's wait_for can swallow a cancellation
        # that races with its own wake-up (the sweep timer kicked at that moment)
        done, _ = await asyncio.wait(list(host._tasks), timeout=0.5)
        for task in done:
            host._tasks.discard(task)
    await host.delivery.hold.flush_all(everything=True)  # delivery's records (no pass runs now)
    assert host.sessions.ingest is not None  # journaled rows written, or kept for the
    await host.sessions.ingest.stop()  # next start when their files fail now
    await host.sessions.drain_writes()  # every write submitted is on disk (issue 19)
    if host._checkpointer is not None:
        await host._checkpointer.stop_async()
        host._checkpointer = None
    host_watch.stop(host)
    remove_projection_hook(host._hook)
    if host._lock_fh is not None:
        host._lock_fh.close()
        host._lock_fh = None
    logger.info("host stopped")


def close(host: Host) -> None:
    host._closed = True
    with contextlib.suppress(sqlite3.Error):
        host.sessions.release_all()
    host.sessions.writers.close()  # runs what is queued, then ends the threads
    close_hook = getattr(host.hooks.on_sweep_session, "close", None)
    if close_hook is not None:  # (the series hook's connections of those threads)
        close_hook()
    if host.sessions.ingest is not None:
        host.sessions.ingest.journal.close()
    if host._checkpointer is not None:
        host._checkpointer.stop()
        host._checkpointer = None
    if host.proxy is not None:
        host.proxy.close()
    host.delivery.outbox.close()
    host.delivery.intents.close()
    host.db.close()
