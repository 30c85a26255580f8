"""Destinations projected into live sessions: a destination or wiring change (by the host,
the admin thread, the CLI) is written into the sessions of that agent group whose runner
is alive, on their writer threads, only where it differs (issue 19); the other sessions
project on wake (host/wake_files.py)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from carapace.db.destinations import projection
from carapace.db.projection import write_rows_on

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger("carapace.host.host")


def on_change(host: Host, db: sqlite3.Connection, agent_group_id: str) -> None:
    """The projection hook (any thread, with that thread's connection): the rows are
    computed here, handed to the host's event loop."""
    rows = projection(db, agent_group_id)
    loop = host._loop
    if loop is None or loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        project_live(host, agent_group_id, rows)
    else:
        loop.call_soon_threadsafe(project_live, host, agent_group_id, rows)


def project_live(host: Host, agent_group_id: str, rows: list[Any]) -> None:
    if host._stopping:
        return
    live = []
    for sid in [*host.pool.running, *host.pool.spawning()]:
        session = host.sessions.get(sid)
        if session is not None and session.agent_group_id == agent_group_id:
            live.append((sid, host.sessions.paths(session)))
    if live:
        host._spawn(write_projection(host, live, rows))


async def write_projection(host: Host, live: list[Any], rows: list[Any]) -> None:
    """On each live session's writer thread: a commit that meets the agent's lock is
    tried again there for up to 5 s, and never holds up another session."""
    task = asyncio.current_task()
    if task is not None:
        host._projecting.add(task)
    try:
        for sid, paths in live:
            try:
                await host.sessions.writers.call(sid, paths, lambda c: write_rows_on(c, rows))
            except (OSError, sqlite3.Error):
                logger.exception("destinations projection failed for %s", paths.root.name)
    finally:
        if task is not None:
            host._projecting.discard(task)
