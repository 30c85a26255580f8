"""What every benchmark of the suite shares: its result record, percentiles, the machine and
load it ran on, an event-loop lag probe, and the one line per benchmark in
``docs/benchmarks.md``.

Benchmarks print figures; they never assert. A goal is stated next to the figure with
"met" / "NOT met" so the docs page says what happened, goals met or not.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import platform
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUITE_HEADER = "## Suite: one line per benchmark"


def load_note() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def user_note() -> str:
    return "root" if os.geteuid() == 0 else f"user ({getpass.getuser()})"


def machine_facts() -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return [
        ("CPU", f"{cpu} ({os.cpu_count()} logical CPUs){mem}"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
        ("SQLite", sqlite3.sqlite_version),
    ]


def machine_short() -> str:
    return f"{os.cpu_count()} CPU, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}"


@dataclass
class Goal:
    text: str
    met: bool | None = None  # None: no verdict (nothing to compare)

    def verdict(self) -> str:
        if self.met is None:
            return self.text
        return f"{self.text}: {'met' if self.met else 'NOT met'}"


@dataclass
class BenchResult:
    """One benchmark's outcome: figures for ``--json``, a summary line, its goals."""

    name: str
    summary: str
    samples: str
    figures: dict[str, Any] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    load_before: str = field(default_factory=load_note)
    load_after: str = ""
    user: str = field(default_factory=user_note)

    def finish(self) -> BenchResult:
        self.load_after = load_note()
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "bench": self.name, "user": self.user, "machine": machine_short(),
            "load": [self.load_before, self.load_after], "samples": self.samples,
            **self.figures,
            "goals": [{"goal": g.text, "met": g.met} for g in self.goals],
        }  # fmt: skip

    def text(self) -> str:
        goals = "; ".join(g.verdict() for g in self.goals)
        return (
            f"{self.name}: {self.summary} [{self.samples}; load {self.load_before}→"
            f"{self.load_after or load_note()}; {self.user}]"
            + (f" goals: {goals}" if goals else "")
        )

    def doc_row(self) -> str:
        goals = "; ".join(g.verdict() for g in self.goals) or "—"
        day = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
        cells = [f"`{self.name}`", self.user, self.summary, goals, self.samples,
                 f"{self.load_before}→{self.load_after}", day]  # fmt: skip
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


class LoopProbe:
    """Measures event-loop stalls: a task asks to wake every ``interval`` and records how
    late each wake-up came. ``longest_ms`` is the longest stall seen while it ran.

    Where the kernel reports it (``/proc/self/task/<tid>/schedstat``), each stall is also
    split: ``longest_unqueued_ms`` is the longest stall less the time the loop's thread sat
    in the CPU run queue meanwhile (runnable, no core free: the machine was busy, not the
    loop). What is left is the loop's own work, or a wait for the GIL or for I/O."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.unqueued: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._since: float | None = None  # when the pending sleep began
        self._queued_since: float | None = None
        self._queue: _RunQueue | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._record()

    def _record(self) -> None:
        now = time.perf_counter()
        since = self._since if self._since is not None else now
        lag = max(0.0, now - since - self.interval)
        self.lags.append(lag)
        queued = self._queue.seconds() if self._queue is not None else None
        if queued is not None and self._queued_since is not None:
            self.unqueued.append(max(0.0, lag - (queued - self._queued_since)))
        self._queued_since = queued
        self._since = time.perf_counter()

    def start(self) -> LoopProbe:
        self.lags = []
        self.unqueued = []
        self._since = time.perf_counter()
        self._queue = _RunQueue()  # (the loop's thread: start is called on the loop)
        self._queued_since = self._queue.seconds()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> float:
        """Stop probing; a wake-up still pending counts with its lateness so far (a loop
        blocked for the whole measurement is one stall of that length, not none)."""
        if self._since is not None:
            self._record()
            self._since = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        return self.longest_ms

    @property
    def longest_ms(self) -> float:
        return max(self.lags, default=0.0) * 1000.0

    @property
    def longest_unqueued_ms(self) -> float | None:
        """The longest stall less its time in the run queue (None: not reported here)."""
        if not self.unqueued:
            return None
        return max(self.unqueued) * 1000.0


class _RunQueue:
    """The calling thread's time in the CPU run queue (its ``schedstat``, kept open)."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open(
                f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY
            )
        except OSError:
            self.fd = None

    def seconds(self) -> float | None:
        if self.fd is None:
            return None
        try:
            return int(os.pread(self.fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_suite_rows(results: list[BenchResult], path: Path | None = None) -> Path:
    """Replace (by benchmark and user) the lines of the suite table in docs/benchmarks.md;
    every other section of the page stays as it is."""
    target = path or Path.cwd() / "docs" / "benchmarks.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "# Benchmarks\n"
    head = (
        f"{SUITE_HEADER}\n\n"
        "`carapace bench <name> --write-docs` (or `carapace bench all --write-docs`) replaces\n"
        "its own line (per user: root or a normal user). Load is the 1-minute load average\n"
        "before→after the run; the machine is described under *Machine* below.\n\n"
        "| bench | user | result | goals | samples | load | when (UTC) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    rows: dict[tuple[str, str], str] = {}
    order: list[tuple[str, str]] = []
    start = text.find(SUITE_HEADER)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        block = text[start : end if end >= 0 else len(text)]
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| `") and len(cells) >= 2:
                key = (cells[0], cells[1])
                rows[key] = line
                order.append(key)
        before, after = text[:start], text[end + 1 if end >= 0 else len(text) :]
    else:
        first = text.find("\n## ")
        before = text[: first + 1] if first >= 0 else text + "\n"
        after = text[first + 1 :] if first >= 0 else ""
    for r in results:
        key = (f"`{r.name}`", r.user)
        if key not in rows:
            order.append(key)
        rows[key] = r.doc_row()
    order.sort(key=lambda k: (_ORDER.index(k[0]) if k[0] in _ORDER else 99, k[1]))
    table = "\n".join(rows[k] for k in dict.fromkeys(order))
    target.write_text(before + head + table + "\n\n" + after, encoding="utf-8")
    return target


_ORDER = [f"`{n}`" for n in ("roundtrip", "fsyncs", "ingest", "burst", "concurrent", "scale",
                             "delivery", "runner", "proxy")]  # fmt: skip
