"""Benchmarks that drive a real ``Host``: round trip, ingest, burst, concurrent chats,
delivery. Runners are real ``python -m carapace.runner`` processes (mock provider, the
machine's strongest sandbox) unless a benchmark says "router only" (a recording backend
that starts nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carapace.bench import nanoclaw_ref
from carapace.bench.common import BenchResult, Goal, LoopProbe
from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
from carapace.channels.base import ChannelCallbacks, InboundEvent, InboundMessage, OutboundMessage
from carapace.config import Home, Settings
from carapace.db import groups, messaging
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.jsonutil import dumps
from carapace.ops.runtime import freeze_heap
from carapace.stats import percentile
from carapace.timefmt import iso, new_id

if TYPE_CHECKING:
    from carapace.bench.floor import Floor

TIMEOUT_S = 120.0
NANOCLAW_ROUTE_MSG_S = 755.0  # NanoClaw's own writeSessionMessage in issue 19's sitting


class SinkChannel:
    """A channel that accepts every delivery and counts them per chat."""

    channel_type = CLI_CHANNEL
    supports_threads = False

    def __init__(self) -> None:
        self.count = 0
        self.last_text: object = None  # the text of the last delivery
        self.per_chat: dict[str, int] = {}
        self.changed = asyncio.Event()
        self.waiting: asyncio.Future[float] | None = None

    async def start(self, callbacks: ChannelCallbacks) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        self.count += 1
        content = message.content
        self.last_text = content.get("text") if isinstance(content, dict) else content
        self.per_chat[platform_id] = self.per_chat.get(platform_id, 0) + 1
        self.changed.set()
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(time.perf_counter())
        return message.message_out_id


def event(text: str, chat: str = CLI_PLATFORM_ID) -> InboundEvent:
    content = dumps({"text": text, "sender": "bench", "senderId": "cli:local"})
    return InboundEvent(CLI_CHANNEL, chat, None,
                        InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip


def make_host(home: Home, channel: SinkChannel, *, runners: bool = True,
              settings: Settings | None = None) -> Host:  # fmt: skip
    init_home(home)
    s = settings or Settings(runner_idle_exit_s=600.0)
    return Host(home, settings=s, channels=[channel],
                backend=None if runners else FakeBackend(),
                options=HostOptions(sockets=False, cleanup_orphans=False))  # fmt: skip


def add_chats(host: Host, n: int) -> list[str]:
    """``n`` more public chats wired (pattern ".") to the main agent group."""
    ag = groups.list_agent_groups(host.db)[0].id
    chats = []
    for i in range(n):
        mg = messaging.create_messaging_group(host.db, CLI_CHANNEL, f"chat-{i}", name=f"c{i}",
                                              unknown_sender_policy="public")  # fmt: skip
        messaging.create_wiring(host.db, mg.id, ag, engage_mode="pattern", engage_pattern=".")
        chats.append(mg.platform_id)
    return chats


def completed_acks(host: Host) -> int:
    """How many inbound rows runners have completed, over every session (off the loop)."""
    import sqlite3

    total = 0
    for sess in host.sessions.db.execute("SELECT id, agent_group_id FROM sessions"):
        path = host.home.data_dir / "v2-sessions" / sess[1] / sess[0] / "outbound.db"
        if not path.exists():
            continue
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            total += conn.execute(
                "SELECT COUNT(*) FROM processing_ack WHERE status='completed'"
            ).fetchone()[0]
        except sqlite3.Error:
            pass
        finally:
            conn.close()
    return total


class AckCounter:
    """Completed inbound rows over many sessions, counted cheaply enough not to compete with
    the host it measures: a session known to have completed ``target`` rows is not read
    again, and each session's ``outbound.db`` is read through one kept read-only connection
    (a fresh connection per session per poll cost 10-20 ms of CPU at 100 sessions)."""

    def __init__(self, host: Host, target: int) -> None:
        self.host = host
        self.target = target
        self.done: dict[str, int] = {}
        self._conns: dict[str, Any] = {}

    def sessions(self) -> list[tuple[str, Path]]:
        """The sessions still short of ``target`` (on the loop: the host's own connection)."""
        base = self.host.home.data_dir / "v2-sessions"
        return [(sid, base / ag / sid / "outbound.db")
                for sid, ag in self.host.sessions.db.execute(
                    "SELECT id, agent_group_id FROM sessions")
                if self.done.get(sid, 0) < self.target]  # fmt: skip

    def count(self, todo: list[tuple[str, Path]]) -> int:
        """Read the sessions in ``todo`` (a worker thread); the total over all sessions."""
        import sqlite3

        for sid, path in todo:
            conn = self._conns.get(sid)
            try:
                if conn is None:
                    if not path.exists():
                        continue
                    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5,
                                           check_same_thread=False)  # fmt: skip
                    self._conns[sid] = conn
                self.done[sid] = conn.execute(
                    "SELECT COUNT(*) FROM processing_ack WHERE status='completed'"
                ).fetchone()[0]
            except sqlite3.Error:
                self._drop(sid)
            if self.done.get(sid, 0) >= self.target:
                self._drop(sid)
        return sum(self.done.values())

    def _drop(self, sid: str) -> None:
        conn = self._conns.pop(sid, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for sid in list(self._conns):
            self._drop(sid)


async def wait_for(
    pred: Callable[[], bool], timeout: float = TIMEOUT_S, step: float = 0.01
) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark timed out")
        await asyncio.sleep(step)


def _tmp_home() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="carapace-bench-")


# --------------------------------------------------------------------------- ingest / burst


BURST_PAGE = 100  # events a channel hands over in one pass (a Telegram getUpdates page)


async def _route_only(home: Home, n: int, burst: bool) -> tuple[float, float]:
    channel = SinkChannel()
    host = make_host(home, channel, runners=False)
    await host.start(background=False)
    freeze_heap()  # as `carapace run` does once the host is up
    try:
        await host.route(event("warm-up"))
        events = [event(f"m{i}") for i in range(n)]  # the sender's work, before the clock
        probe = LoopProbe().start()
        t0 = time.perf_counter()
        if burst:  # handed over a page per pass of the loop, as a channel reads them
            routes: list[asyncio.Future[Any]] = []
            left = [n]
            all_done = asyncio.get_running_loop().create_future()

            def one_done(_: asyncio.Future[Any]) -> None:
                left[0] -= 1
                if not left[0] and not all_done.done():
                    all_done.set_result(None)

            for i in range(0, n, BURST_PAGE):
                for e in events[i : i + BURST_PAGE]:
                    routes.append(asyncio.ensure_future(host.route(e, settle=False)))
                    routes[-1].add_done_callback(one_done)
                await asyncio.sleep(0)
            # (not one gather of every route: its set-up, a pass over them all at once, was
            # the sender's stall of the loop, not the host's: ~5-8 ms at 2,000)
            await all_done
            for r in routes:
                r.result()  # (a route that failed fails the run)
        else:
            for e in events:  # each acknowledged once durable (journaled), as a channel's
                await host.route(e, settle=False)
        await host.sessions.settle()  # and every row in its session's inbound.db
        dt = time.perf_counter() - t0
        stall = await probe.stop()
    finally:
        await host.stop()
        host.close()
    return n / dt, stall


async def _live_one_chat(home: Home, n: int) -> float:
    channel = SinkChannel()
    host = make_host(home, channel)
    await host.start()
    freeze_heap()  # as `carapace run` does once the host is up
    try:
        channel.waiting = asyncio.get_running_loop().create_future()
        await host.route(event("warm-up"))
        await asyncio.wait_for(channel.waiting, TIMEOUT_S)  # the runner is up
        base = await asyncio.to_thread(completed_acks, host)
        t0 = time.perf_counter()
        for i in range(n):  # each acknowledged once durable, as a channel's events are
            await host.route(event(f"m{i}"), settle=False)

        done = base

        async def all_done() -> bool:
            nonlocal done
            done = await asyncio.to_thread(completed_acks, host)
            return done >= base + n

        deadline = t0 + TIMEOUT_S
        while not await all_done():
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{done - base} of {n} answered")
            await asyncio.sleep(0.005)
        return n / (time.perf_counter() - t0)
    finally:
        await host.stop()
        host.close()


def run_ingest(n: int = 2000, n_live: int = 1000) -> BenchResult:
    refs = [nanoclaw_ref.write_session_message(n)]  # before and after: the disk's drift
    with _tmp_home() as tmp:
        rate, stall = asyncio.run(_route_only(Home.resolve(Path(tmp) / "a"), n, burst=False))
        refs.append(nanoclaw_ref.write_session_message(n))
        live = asyncio.run(_live_one_chat(Home.resolve(Path(tmp) / "b"), n_live))
    ref = statistics.mean(refs)
    return BenchResult(
        "ingest",
        f"router only (one chat, one message at a time, each acknowledged once durable in the "
        f"ingest journal; timed until every row is in inbound.db): **{rate:.0f} msg/s**; live "
        f"host with agent answering, one chat: **{live:.0f} msg/s** (routed until every row "
        f"completed); NanoClaw's `writeSessionMessage` on this disk in the same run "
        f"(bench/nanoclaw_ref.py): **{ref:.0f} msg/s**, so the router is "
        f"**{rate / ref:.2f}×** it ({NANOCLAW_ROUTE_MSG_S:.0f} msg/s in issue 19's sitting)",
        f"{n} routed; {n_live} live; 2 × {n} through NanoClaw's way, before and after",
        {
            "route_msg_s": round(rate, 1),
            "live_msg_s": round(live, 1),
            "nanoclaw_msg_s": round(ref, 1),
            "route_vs_nanoclaw": round(rate / ref, 2),
            "longest_stall_ms": round(stall, 2),
        },
        [
            Goal("router ≥ 2× NanoClaw's in the same run", rate >= 2 * ref),
            Goal("live ≥ 800 msg/s", live >= 800),
        ],
    ).finish()


def run_burst(n: int = 2000) -> BenchResult:
    with _tmp_home() as tmp:
        rate, stall = asyncio.run(_route_only(Home.resolve(tmp), n, burst=True))
    return BenchResult(
        "burst",
        f"{n} messages arriving at once to one chat (router only; handed over "
        f"{BURST_PAGE} per pass of the event loop, as a channel reads a page of updates): "
        f"**{rate:.0f} msg/s**, longest loop stall **{stall:.1f} ms**",
        f"{n} messages",
        {"burst_msg_s": round(rate, 1), "longest_stall_ms": round(stall, 2)},
        [Goal("≥ 5,000 msg/s", rate >= 5000), Goal("longest loop stall ≤ 10 ms", stall <= 10)],
    ).finish()


# --------------------------------------------------------------------------- concurrent


async def _concurrent(
    home: Home, chats: int, per_chat: int
) -> tuple[float, float, float | None, int]:
    channel = SinkChannel()
    init_home(home)
    host = make_host(home, channel, settings=home.load_settings())  # defaults: the real cap
    await host.start()
    freeze_heap()  # as `carapace run` does once the host is up
    try:
        ids = add_chats(host, chats)
        probe = LoopProbe().start()
        t0 = time.perf_counter()
        for m in range(per_chat):
            for c in ids:
                await host.route(event(f"m{m}", c), settle=False)
                await asyncio.sleep(0)  # one adapter event at a time, as channels deliver
        total = chats * per_chat
        acks = AckCounter(host, per_chat)
        try:
            deadline = t0 + 600.0
            while (n := await asyncio.to_thread(acks.count, acks.sessions())) < total:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{n} of {total} answered")
                await asyncio.sleep(0.05)
        finally:
            acks.close()
        await wait_for(lambda: all(channel.per_chat.get(c, 0) >= 1 for c in ids), 60.0)
        dt = time.perf_counter() - t0
        stall = await probe.stop()
        return dt, stall, probe.longest_unqueued_ms, host.pool.max_runners
    finally:
        await host.stop()
        host.close()


def run_concurrent(chats: int = 100, per_chat: int = 10) -> BenchResult:
    with _tmp_home() as tmp:
        dt, stall, unqueued, cap = asyncio.run(_concurrent(Home.resolve(tmp), chats, per_chat))
    split = (
        f" (less the loop thread's wait in the CPU run queue: {unqueued:.1f} ms at most)"
        if unqueued is not None else ""
    )  # fmt: skip
    return BenchResult(
        "concurrent",
        f"{chats} chats × {per_chat} messages, default settings (runner cap {cap}): all "
        f"answered in **{dt:.1f} s**; longest loop stall {stall:.1f} ms{split}",
        f"{chats * per_chat} messages, one run",
        {
            "seconds": round(dt, 2),
            "runner_cap": cap,
            "longest_stall_ms": round(stall, 2),
            "longest_stall_unqueued_ms": None if unqueued is None else round(unqueued, 2),
        },
        [Goal("all answered ≤ 30 s", dt <= 30.0)],
    ).finish()


# --------------------------------------------------------------------------- delivery


async def _delivery(home: Home, rows: int) -> tuple[float, float]:
    from carapace.db.connection import transaction
    from carapace.db.session import insert_message_out, open_outbound

    channel = SinkChannel()
    host = make_host(home, channel, runners=False)
    await host.start(background=False)
    freeze_heap()  # as `carapace run` does once the host is up
    try:
        await host.route(event("hello"))
        sess = host.sessions.db.execute("SELECT id FROM sessions").fetchone()[0]
        session = host.sessions.get(sess)
        assert session is not None
        paths = host.sessions.paths(session)
        out = open_outbound(paths)
        try:
            with transaction(out):
                for i in range(rows):
                    insert_message_out(out, {
                        "id": f"out-{i}", "timestamp": iso(), "kind": "chat",
                        "platform_id": CLI_PLATFORM_ID, "channel_type": CLI_CHANNEL,
                        "content": dumps({"text": f"reply {i}"}),
                    })  # fmt: skip
        finally:
            out.close()
        probe = LoopProbe().start()
        t0 = time.perf_counter()
        n = await host.deliver_once(sess)
        dt = time.perf_counter() - t0
        stall = await probe.stop()
        assert n == rows, f"{n} of {rows} delivered"
        return rows / dt, stall
    finally:
        await host.stop()
        host.close()


def run_delivery(rows: int = 2000) -> BenchResult:
    with _tmp_home() as tmp:
        rate, stall = asyncio.run(_delivery(Home.resolve(tmp), rows))
    return BenchResult(
        "delivery",
        f"{rows} waiting replies of one session delivered in one drain: **{rate:.0f} rows/s** "
        f"({1000 / rate:.2f} ms/row); longest loop stall {stall:.1f} ms",
        f"{rows} rows",
        {"rows_s": round(rate, 1), "longest_stall_ms": round(stall, 2)},
        [Goal("no stall > 10 ms", stall <= 10.0)],
    ).finish()


# --------------------------------------------------------------------------- round trip


@contextlib.contextmanager
def _marked(marks: dict[str, float]) -> Iterator[None]:
    """Note the first time, per round trip, the host hears its message is durable in the
    session's file (``Host.wake``, once the router's commit and the journal's sync end:
    the runner was woken by the commit already) and sees the runner's commit
    (``Host._on_outbound_change``). Patched on the class before the host is made (its
    router keeps the bound ``wake``)."""
    wake, changed = Host.wake, Host._on_outbound_change

    def on_wake(self: Host, session_id: str) -> None:
        marks.setdefault("stored", time.perf_counter())
        wake(self, session_id)

    def on_change(self: Host, session_id: str) -> None:
        marks.setdefault("answered", time.perf_counter())
        changed(self, session_id)

    Host.wake, Host._on_outbound_change = on_wake, on_change  # type: ignore[method-assign]
    try:
        yield
    finally:
        Host.wake, Host._on_outbound_change = wake, changed  # type: ignore[method-assign]


ROUNDTRIP_BLOCKS = 10  # the run's trips in blocks, a block of the floor's before each


async def _roundtrip(home: Home, n: int, gap_s: float = 0.0, floor: Floor | None = None,
                     floor_n: int = 0) -> dict[str, Any]:  # fmt: skip
    """``n`` warm round trips (and the cold one); with ``floor``, ``floor_n`` of the
    floor's, measured in blocks between blocks of ours (a block of the floor's first and
    last): the machine's speed drifts from one minute to the next (±30 %), and a floor
    measured only before and after a run was as often at another moment of it as not."""
    channel = SinkChannel()
    marks: dict[str, float] = {}
    with _marked(marks):
        host = make_host(home, channel)
    await host.start()
    freeze_heap()  # as `carapace run` does once the host is up
    split: list[tuple[float, float, float]] = []  # (to stored, runner, delivery) ms

    async def one(text: str) -> float:
        channel.waiting = asyncio.get_running_loop().create_future()
        marks.clear()
        ev = event(text)  # (a channel's own work: the clock starts with the event made)
        t0 = time.perf_counter()
        await host.route(ev)
        t1 = await asyncio.wait_for(channel.waiting, TIMEOUT_S)
        stored, answered = marks.get("stored"), marks.get("answered")
        if stored is not None and answered is not None and t0 <= stored <= answered <= t1:
            split.append(((stored - t0) * 1000, (answered - stored) * 1000,
                          (t1 - answered) * 1000))  # fmt: skip
        return (t1 - t0) * 1000.0

    n = max(1, n)
    blocks = min(ROUNDTRIP_BLOCKS, n) if floor is not None else 1
    floor_samples: list[float] = []

    def floor_block(k: int) -> None:  # (blocking: the host is idle meanwhile)
        if floor is not None:
            want = round(floor_n * (k + 1) / (blocks + 1)) - round(floor_n * k / (blocks + 1))
            floor_samples.extend(floor.trips(want))

    try:
        with _marked(marks):
            cold = await one("hello (cold)")
            split.clear()
            samples: list[float] = []
            for b in range(blocks):
                floor_block(b)
                for i in range(n * b // blocks, n * (b + 1) // blocks):
                    if gap_s and samples:
                        await asyncio.sleep(gap_s)  # a chat's pace: the host's timers fire
                    samples.append(await one(f"hello {i}"))
            floor_block(blocks)
    finally:
        await host.stop()
        host.close()
    parts = [statistics.median(p) for p in zip(*split, strict=True)] if split else []
    return {"cold": cold, "samples": samples, "backend": host.backend_note, "split": parts,
            "split_n": len(split), "floor": floor_samples}  # fmt: skip


def run_roundtrip(n: int = 200, floor_n: int = 200) -> BenchResult:
    from carapace.bench.floor import Floor

    with _tmp_home() as tmp:
        kept = Floor(Path(tmp) / "floor")
        try:
            r = asyncio.run(_roundtrip(Home.resolve(Path(tmp) / "home"), n, floor=kept,
                                       floor_n=2 * floor_n))  # fmt: skip
        finally:
            kept.close()
    floor: list[float] = r["floor"]
    samples: list[float] = r["samples"]
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    f50, f99 = statistics.median(floor), percentile(floor, 0.99)
    split = r["split"]
    split_text = (
        f"where the p50 goes (medians of {r['split_n']}): routed until durable and "
        f"acknowledged {split[0]:.2f} ms (the runner is woken by the commit itself, before "
        f"the acknowledgement's last sync), then until the host saw the runner's reply "
        f"{split[1]:.2f} ms, delivery {split[2]:.2f} ms; "
        if split
        else ""
    )
    return BenchResult(
        "roundtrip",
        f"warm p50 **{p50:.2f} ms**, p99 {p99:.2f} ms; floor (two processes, 3 durable commits, "
        f"2 inotify wakes) p50 {f50:.2f} ms, p99 {f99:.2f} ms; ratio p50 **{p50 / f50:.2f}×**, "
        f"p99 {p99 / f99:.2f}×; {split_text}cold start {r['cold']:.0f} ms (one sample); "
        f"{r['backend']}",
        f"{len(samples)} warm round trips, {len(floor)} floor round trips",
        {
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "floor_p50_ms": round(f50, 3),
            "floor_p99_ms": round(f99, 3),
            "ratio_p50": round(p50 / f50, 2),
            "ratio_p99": round(p99 / f99, 2),
            "cold_start_ms": round(r["cold"], 1),
            **(
                {
                    "split_stored_ms": round(split[0], 3),
                    "split_runner_ms": round(split[1], 3),
                    "split_delivery_ms": round(split[2], 3),
                }
                if split
                else {}
            ),
            "backend": r["backend"],
        },
        [Goal("p50 ≤ 1.5× floor", p50 <= 1.5 * f50), Goal("p99 ≤ 3× floor", p99 <= 3 * f99)],
    ).finish()


SPACED_GAP_S = 1.2  # longer than the host's ack flush delay (sweep.ACK_FLUSH_S)


def fsync_child(n: int, gap_s: float = 0.0) -> None:
    """Run ``n`` warm round trips (the body of :func:`run_fsyncs`, under ``perf stat``)."""
    with _tmp_home() as tmp:
        asyncio.run(_roundtrip(Home.resolve(tmp), n, gap_s))


def _count_fsyncs(n: int, gap_s: float = 0.0) -> tuple[int, str] | None:
    """fsync + fdatasync calls of a run of ``n`` round trips (its children included), and
    what counted them: ``perf stat``'s syscall tracepoints where this user may read them
    (root), else ``strace -f -c`` (ptrace of the run's own processes: a normal user, the
    runners in their sandboxes included); None when neither can."""
    import shutil
    import subprocess
    import sys

    child = [sys.executable, "-c",
             f"from carapace.bench.host_benches import fsync_child; fsync_child({n}, {gap_s})"]  # fmt: skip
    perf = shutil.which("perf")
    if perf is not None:
        with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
            cmd = [perf, "stat", "-x,", "-o", out.name, "-e",
                   "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "--", *child]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            counted = _perf_fsyncs(out.read()) if proc.returncode == 0 else None
        if counted is not None:
            return counted, "perf stat"
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        cmd = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", out.name, "--", *child]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        counted = strace_fsyncs(out.read()) if proc.returncode == 0 else None
    return (counted, "strace -f") if counted is not None else None  # fmt: skip


def _perf_fsyncs(text: str) -> int | None:
    total, seen = 0, False
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and "sys_enter_f" in parts[2]:
            if not parts[0].strip().isdigit():
                return None  # "<not supported>", "<not counted>": not this user's to read
            total += int(parts[0])
            seen = True
    return total if seen else None


def strace_fsyncs(text: str) -> int | None:
    """The fsync + fdatasync calls in a ``strace -c`` summary (0 when it lists none of
    them; None when it is no summary)."""
    total, table = 0, False
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["%", "time"]:
            table = True
        elif table and len(words) >= 5 and words[-1] in ("fsync", "fdatasync"):
            total += int(words[3])
    return total if table else None


def run_fsyncs(n: int = 100, spaced: int = 8) -> BenchResult:
    """fsync + fdatasync calls per warm round trip, counted by ``perf stat`` (syscall
    tracepoints, children included; ``strace -f`` where this user may not read them) over
    a run of ``n`` and a run of 1, subtracted; and
    the same for ``spaced`` round trips :data:`SPACED_GAP_S` apart (a chat's pace, where
    every write the host batches by time is made)."""
    runs = _count_fsyncs(1), _count_fsyncs(n + 1), _count_fsyncs(spaced + 1, SPACED_GAP_S)
    if any(r is None for r in runs):
        return BenchResult("fsyncs", "not measured: neither `perf stat` with syscall "
                           "tracepoints nor `strace` is available to this user",
                           "—").finish()  # fmt: skip
    (few, how), (many, _), (slow, _) = (r for r in runs if r is not None)
    per, per_spaced = (many - few) / n, (slow - few) / spaced
    return BenchResult(
        "fsyncs",
        f"**{per:.1f} fsync/fdatasync calls per warm round trip** (host and runner together); "
        f"{per_spaced:.1f} per round trip {SPACED_GAP_S:g} s apart; counted by {how}",
        f"{n} round trips back to back, {spaced} spaced (differences of runs)",
        {
            "fsyncs_per_roundtrip": round(per, 2),
            "fsyncs_per_spaced_roundtrip": round(per_spaced, 2),
        },
        [Goal("≤ 15", per <= 15.0 and per_spaced <= 15.0)],
    ).finish()
