"""The scale benchmark: a home with many active sessions, each with a long history.

Built directly on disk (sessions × history rows of ``messages_in`` completed,
``messages_out`` delivered, their acks and ``delivered`` rows, the delivery cursor at the
top; in :data:`SERIES_SESSIONS` of them also a minutely task that has run
:data:`SERIES_ROWS` times, recorded in the task history, its next run an hour away), then
one host (no runners: a recording backend) is timed for: start (work-index rebuild
included), idle CPU, a forced sweep of every session (the first look at each task history
since the start), a second forced sweep of the sessions with a task, a drain of every session, a wiring change of the agent group
that owns every session (with a few live runners), and the longest event-loop stall of
each, measured by a loop-lag probe.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from datetime import timedelta
from typing import Any

from carapace.bench.common import BenchResult, Goal, LoopProbe
from carapace.bench.host_benches import SinkChannel, make_host
from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home, open_home
from carapace.config import Home
from carapace.db import groups, messaging
from carapace.db.connection import connect, transaction
from carapace.db.session import SessionPaths, init_session_folder
from carapace.db.sessions import create_session
from carapace.jsonutil import dumps
from carapace.ops.runtime import freeze_heap
from carapace.timefmt import iso, sqlite_ts, utcnow

LIVE_RUNNERS = 8
# the idle window, from 1 s after the start: it holds one of the sweep's safety passes (every
# 60 s, host_sweep.SAFETY_TICK_S), the idle host's largest periodic work; a 20 s window
# (until 2026-12-07) held none, and its figure moved with whatever else woke (0.045-0.124 %)
IDLE_S = 61.0
SERIES_SESSIONS = 100  # sessions with a minutely task …
SERIES_ROWS = 3000  # … that has run this many times (two days and two hours)


def build_home(home: Home, sessions: int, history: int, series: int = 0) -> list[str]:
    """``sessions`` active sessions of the main group, ``history`` rows each way, all done;
    the first ``series`` of them with a minutely task (:func:`_add_series`)."""
    init_home(home)
    db, _ = open_home(home)
    ids: list[str] = []
    try:
        ag = groups.list_agent_groups(db)[0].id
        mg = messaging.get_messaging_group_by_platform(db, CLI_CHANNEL, CLI_PLATFORM_ID)
        assert mg is not None
        ts = sqlite_ts(utcnow() - timedelta(days=1))
        body = dumps({"text": "x" * 150, "sender": "bench", "senderId": "cli:local"})
        for i in range(sessions):
            s = create_session(db, ag, mg.id, f"thread-{i}")
            ids.append(s.id)
            paths = SessionPaths.of(home.data_dir, ag, s.id)
            init_session_folder(paths)
            inb = connect(paths.inbound, "session")
            out = connect(paths.outbound, "session")
            try:
                with transaction(out):
                    out.executemany(
                        "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, "
                        "channel_type, content) VALUES (?, ?, ?, 'chat', ?, ?, ?)",
                        [(f"o{k}", 2 * k + 1, ts, CLI_PLATFORM_ID, CLI_CHANNEL, body)
                         for k in range(history)],
                    )  # fmt: skip
                    out.executemany(
                        "INSERT INTO processing_ack (message_id, status, status_changed) "
                        "VALUES (?, 'completed', ?)", [(f"i{k}", ts) for k in range(history)],
                    )  # fmt: skip
                with transaction(inb):
                    inb.executemany(
                        "INSERT INTO messages_in (id, seq, kind, timestamp, status, platform_id, "
                        "channel_type, content, series_id) VALUES (?, ?, 'chat', ?, "
                        "'completed', ?, ?, ?, ?)",
                        [(f"i{k}", 2 * k + 2, ts, CLI_PLATFORM_ID, CLI_CHANNEL, body, f"i{k}")
                         for k in range(history)],
                    )  # fmt: skip
                    inb.executemany(
                        "INSERT INTO delivered (message_out_id, platform_message_id, status, "
                        "delivered_at) VALUES (?, ?, 'delivered', ?)",
                        [(f"o{k}", f"o{k}", ts) for k in range(history)],
                    )  # fmt: skip
                    inb.execute(
                        "CREATE TABLE IF NOT EXISTS carapace_delivery_cursor (id INTEGER "
                        "PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)"
                    )
                    inb.execute("INSERT INTO carapace_delivery_cursor VALUES (1, ?)",
                                (2 * history - 1,))  # fmt: skip
                if i < series:
                    _add_series(db, inb, out, ag, s.id, 2 * history + 2)
            finally:
                inb.close()
                out.close()
    finally:
        db.close()
    return ids


def _add_series(db: Any, inb: Any, out: Any, ag: str, sid: str, seq: int) -> None:
    """A minutely task that has run :data:`SERIES_ROWS` times up to a minute ago (each run
    acknowledged by the runner and in the task history); its next run is an hour away (a
    run due during the idle window would be work, not idle)."""
    now = utcnow().replace(second=0, microsecond=0)
    body = dumps({"prompt": "check the feed", "script": None})
    times = [now - timedelta(minutes=SERIES_ROWS - k) for k in range(SERIES_ROWS)]
    ids = [f"task-{sid}@{k}" for k in range(SERIES_ROWS)]
    with transaction(inb):
        inb.executemany(
            "INSERT INTO messages_in (id, seq, kind, timestamp, status, process_after, "
            "platform_id, channel_type, content, series_id) VALUES (?, ?, 'task', ?, "
            "'completed', ?, ?, ?, ?, ?)",
            [(mid, seq + 2 * k, sqlite_ts(t), iso(t), CLI_PLATFORM_ID, CLI_CHANNEL, body,
              f"task-{sid}") for k, (mid, t) in enumerate(zip(ids, times, strict=True))],
        )  # fmt: skip
        inb.execute(
            "INSERT INTO messages_in (id, seq, kind, timestamp, status, process_after, "
            "recurrence, platform_id, channel_type, content, series_id) VALUES (?, ?, 'task', "
            "?, 'pending', ?, '* * * * *', ?, ?, ?, ?)",
            (f"task-{sid}@head", seq + 2 * SERIES_ROWS, sqlite_ts(now), iso(now + timedelta(hours=1)),
             CLI_PLATFORM_ID, CLI_CHANNEL, body, f"task-{sid}"),
        )  # fmt: skip
    with transaction(out):
        out.executemany(
            "INSERT INTO processing_ack (message_id, status, status_changed) "
            "VALUES (?, 'completed', ?)", [(m, sqlite_ts(t)) for m, t in zip(ids, times, strict=True)],
        )  # fmt: skip
    with transaction(db):
        db.executemany(
            "INSERT INTO carapace_task_runs (id, series_id, agent_group_id, session_id, "
            "scheduled_for, run_at, outcome, created_at) VALUES (?, ?, ?, ?, ?, ?, 'ran', ?)",
            [(m, f"task-{sid}", ag, sid, iso(t), iso(t), iso(t))
             for m, t in zip(ids, times, strict=True)],
        )  # fmt: skip


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _forced_sweep(host: Any, ids: list[str], probe: LoopProbe) -> tuple[float, float]:
    """A sweep pass over ``ids`` made due now: (its seconds, the longest loop stall, ms)."""
    now = host.now()
    with transaction(host.db):
        for sid in ids:
            host.sessions.work.set(sid, iso(now))
    probe.start()
    t0 = time.perf_counter()
    await host.sweep_once(now)
    took = time.perf_counter() - t0
    return took, await probe.stop()


async def _measure(home: Home, ids: list[str], idle_s: float, series: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    channel = SinkChannel()
    t0 = time.perf_counter()
    host = make_host(home, channel, runners=False)  # opens the home; the loop serves nothing yet
    freeze_heap()  # as `carapace run` does before the host starts (and again once it is up)
    probe = LoopProbe().start()
    await host.start()
    freeze_heap()  # as `carapace run` does once the host is up
    figures["start_s"] = time.perf_counter() - t0
    figures["start_stall_ms"] = await probe.stop()
    try:
        await asyncio.sleep(1.0)  # let the start-up index settle
        c0, w0 = _cpu(), time.perf_counter()  # no probe: its own wake-ups would cost CPU
        await asyncio.sleep(idle_s)
        figures["idle_cpu_pct"] = 100.0 * (_cpu() - c0) / (time.perf_counter() - w0)
        probe.start()
        await asyncio.sleep(min(idle_s, 5.0))
        figures["idle_stall_ms"] = await probe.stop()

        figures["sweep_s"], figures["sweep_stall_ms"] = await _forced_sweep(host, ids, probe)
        if series:  # a look again at the sessions with a task: only what is new is read
            figures["series_sweep_s"], figures["series_stall_ms"] = await _forced_sweep(
                host, ids[:series], probe
            )

        probe.start()
        t0 = time.perf_counter()
        for sid in ids:
            await host.deliver_once(sid)
        figures["drain_s"] = time.perf_counter() - t0
        figures["drain_stall_ms"] = await probe.stop()

        for sid in ids[:LIVE_RUNNERS]:  # a few live runners (recorded, nothing runs)
            host.pool.wake(sid)
        await asyncio.sleep(0.2)
        ag = groups.list_agent_groups(host.db)[0].id
        mg = messaging.create_messaging_group(host.db, CLI_CHANNEL, "other-chat", name="other")
        probe.start()
        t0 = time.perf_counter()
        messaging.create_wiring(host.db, mg.id, ag, engage_mode="pattern", engage_pattern=".")
        await asyncio.sleep(0)
        figures["wiring_s"] = time.perf_counter() - t0
        figures["wiring_stall_ms"] = await probe.stop()
        t0 = time.perf_counter()
        settle = getattr(host, "projection_idle", None)
        if settle is not None:
            await settle()
        figures["wiring_settled_s"] = time.perf_counter() - t0 + figures["wiring_s"]
    finally:
        await host.stop()
        host.close()
    return figures


def run_scale(sessions: int = 1000, history: int = 1000, idle_s: float = IDLE_S,
              series: int = SERIES_SESSIONS) -> BenchResult:  # fmt: skip
    series = min(series, sessions)
    with tempfile.TemporaryDirectory(prefix="carapace-bench-") as tmp:
        home = Home.resolve(tmp)
        t0 = time.perf_counter()
        ids = build_home(home, sessions, history, series)
        build_s = time.perf_counter() - t0
        f = asyncio.run(_measure(home, ids, idle_s, series))
    stalls = {k: v for k, v in f.items() if k.endswith("_stall_ms")}
    worst = max(stalls.values())
    which = max(stalls, key=lambda k: stalls[k]).removesuffix("_stall_ms")
    summary = (
        f"{sessions} sessions × {history} rows each way, {series} of them with a minutely task "
        f"run {SERIES_ROWS} times: start {f['start_s']:.2f} s; idle CPU "
        f"**{f['idle_cpu_pct']:.3f} %** of a core; forced sweep of all {f['sweep_s']:.2f} s"
        + (
            f" (then of the {series} with a task again {f['series_sweep_s']:.2f} s)"
            if series
            else ""
        )
        + f"; drain of all {f['drain_s']:.2f} s; wiring change {f['wiring_settled_s']:.2f} s "
        f"until projected ({LIVE_RUNNERS} live runners); **longest loop stall "
        f"{worst:.1f} ms** ({which}); stalls ms: "
        + ", ".join(f"{k.removesuffix('_stall_ms')} {v:.1f}" for k, v in stalls.items())
    )
    return BenchResult(
        "scale",
        summary,
        f"one run; home built in {build_s:.0f} s; idle window {idle_s:g} s",
        {
            "sessions": sessions,
            "history": history,
            **{k: round(v, 4) for k, v in f.items()},
        },
        [
            Goal("longest stall ≤ 10 ms", worst <= 10.0),
            Goal("idle < 0.1 % of a core", f["idle_cpu_pct"] < 0.1),
        ],
    ).finish()
