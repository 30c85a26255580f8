"""The soak benchmark: what one long-running host keeps per session it has served.

A real host with real runners answers ``sessions`` chats, ``batch`` new ones at a time; each
chat is a new session whose runner answers and then idles out. After every batch, once its
runners have ended, the host's open descriptors, threads, resident memory, inotify watches
and live runners are read. Whatever grows with the number of sessions ever served and not
with the number live is a leak of a host that runs for months: it found the host watching
every session folder that ever had a runner, and delivery keeping a record per session.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from carapace.bench.common import BenchResult, Goal
from carapace.bench.host_benches import TIMEOUT_S, SinkChannel, add_chats, event, make_host
from carapace.config import Home, Settings
from carapace.host.host import Host

IDLE_EXIT_S = 0.3  # runners end soon after their answer: each batch ends with none live
WARM_SESSIONS = 200  # the host's connection caches are full by then (fds flat from ~150)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _probe(host: Host, served: int) -> dict[str, int]:
    gc.collect()
    watcher = host._watcher
    return {"served": served, "fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task")), "rss_kib": _status_kib("VmRSS"),
            "watched": len(watcher.paths()) if watcher is not None else 0,
            "live": len(host.pool.running)}  # fmt: skip


async def _until(cond: Any, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak: {what} not within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def _soak(home: Home, sessions: int, batch: int) -> list[dict[str, int]]:
    channel = SinkChannel()
    host = make_host(home, channel, settings=Settings(runner_idle_exit_s=IDLE_EXIT_S))
    await host.start()
    rows: list[dict[str, int]] = []
    try:
        chats = add_chats(host, sessions)
        for start in range(0, sessions, batch):
            part = chats[start : start + batch]
            for chat in part:
                await host.route(event("hello", chat))
            served = start + len(part)
            await _until(lambda n=served: channel.count >= n, "every answer")
            await _until(lambda: not host.pool.running and not host.pool.spawning()
                         and not host._releasing, "the runners' ends")  # fmt: skip
            rows.append(_probe(host, served))
    finally:
        await host.stop()
        host.close()
    return rows


def run_soak(sessions: int = 1000, batch: int = 25) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="carapace-soak-") as tmp:
        rows = asyncio.run(_soak(Home(Path(tmp) / "home"), sessions, batch))
    # the connection caches fill over the first ~150 sessions; what grows after is what is
    # kept per session served
    warm = next((r for r in rows if r["served"] >= WARM_SESSIONS), rows[len(rows) // 2])
    last = rows[-1]
    span = max(1, last["served"] - warm["served"])
    per_session = (last["rss_kib"] - warm["rss_kib"]) / span
    fd_growth = last["fds"] - warm["fds"]
    thread_growth = last["threads"] - warm["threads"]
    watched = max(r["watched"] for r in rows)
    summary = (
        f"{last['served']} sessions served, {batch} at a time, each runner ended before the "
        f"next batch: host RSS {warm['rss_kib'] / 1024:.1f} MiB after {warm['served']} → "
        f"{last['rss_kib'] / 1024:.1f} MiB after {last['served']} (**{per_session:.1f} KiB "
        f"per session served**); open fds {warm['fds']} → {last['fds']}, threads "
        f"{warm['threads']} → {last['threads']}; session folders watched with no runner "
        f"live: {watched} at most"
    )
    return BenchResult(
        "soak", summary, f"{len(rows)} batches of {batch}; runners idle out after "
        f"{IDLE_EXIT_S} s",
        figures={"sessions": last["served"], "batch": batch, "rows": rows,
                 "rss_kib_per_session": round(per_session, 2), "fd_growth": fd_growth,
                 "thread_growth": thread_growth, "watched_max": watched},
        goals=[Goal("no folder watched without a live runner", watched == 0),
               Goal("fds and threads flat once the caches are full",
                    fd_growth <= 8 and thread_growth <= 2)],
    ).finish()  # fmt: skip
