"""Watching session folders: one inotify watch per live session's folder (from its runner's
start to its exit) wakes the host when its runner commits to ``outbound.db`` (a poll every
0.25 s where inotify is missing); a session folder deleted under a live runner stops that
runner."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import stat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger("carapace.host.host")


def start(host: Host) -> None:
    try:
        from carapace.watch import DirWatcher
    except ImportError:  # pragma: no cover
        logger.warning("carapace.watch missing; delivery falls back to the sweep")
        return
    host._watcher = DirWatcher(poll_interval=0.25)
    fd = host._watcher.fileno()
    if fd is not None:
        asyncio.get_running_loop().add_reader(fd, functools.partial(on_watch, host))
    else:
        host._spawn(poll_watch(host))


def watch_session(host: Host, root: Any) -> None:
    try:
        host._watcher.add(root, names={"outbound.db", "outbound.db-journal"}, settle=True)
    except Exception:
        logger.exception("cannot watch %s", root)


def unwatch_session(host: Host, root: Any) -> None:
    """The session's runner ended: its folder is watched no more (the host's last look at
    it is ``after_exit``'s drain). Kept, the watches of every session that ever ran added
    up: a kernel watch each (``fs.inotify.max_user_watches``, 8192 on older kernels and
    shared with the user's other programs) and, where inotify is missing, a ``stat`` per
    0.25 s poll each."""
    if host._watcher is not None:
        host._watcher.remove(root)


def on_watch(host: Host) -> None:
    for path in host._watcher.drain():
        try:  # (one stat: every runner commit comes here)
            mode: int | None = os.stat(path).st_mode
        except OSError:
            mode = None
        sid = path.name if mode is not None and stat.S_ISDIR(mode) else path.parent.name
        if mode is None and path.name.startswith("sess-") and host.pool.is_running(sid):
            # the session folder was deleted under its runner, which would go on writing
            # into the deleted files: stop it; the next message starts one on a new folder
            logger.warning("session folder of %s deleted: stopping its runner", sid)
            host._spawn(host.pool.stop(sid, "session folder deleted"))
            continue
        host._on_outbound_change(sid)


async def poll_watch(host: Host) -> None:
    while True:
        await asyncio.sleep(0.25)
        on_watch(host)


def stop(host: Host) -> None:
    if host._watcher is None:
        return
    fd = host._watcher.fileno()
    if fd is not None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
    host._watcher.close()
    host._watcher = None
