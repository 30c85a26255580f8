"""The runner benchmark: cold start (first message of a session → delivered reply, runner
spawn included), where the start-up time goes (interpreter, imports, sandbox), and the
memory of an idle runner.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from carapace.bench import nanoclaw_ref
from carapace.bench.common import BenchResult, Goal
from carapace.bench.host_benches import TIMEOUT_S, SinkChannel, event, make_host
from carapace.config import Home, Settings
from carapace.db import groups
from carapace.ops.runtime import freeze_heap
from carapace.runner.procs import descendants
from carapace.sandbox.process import LOG_FILE, _spares
from carapace.sandbox.spare import REFILL_DELAY_S
from carapace.stats import percentile


def rss_kib(pid: int) -> int:
    """Resident memory of one process (``VmRSS``), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split between their users), 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


READY_RE = re.compile(
    r"runner ready: imports ([\d.]+) ms, set-up ([\d.]+) ms, start ([\d.]+) ms "
    r"\(main module at ([\d.]+)\)"
)
SETTLE_S = REFILL_DELAY_S + 0.5
PHASES = ("to_main_ms", "imports_ms", "setup_ms", "start_ms", "turn_and_delivery_ms")


def phases(log: Path, t0_wall: float, total_ms: float) -> dict[str, float] | None:
    """Split one cold start with the runner's own start-up line (its last in ``log``):
    route → the runner's main module (host prepare, spawn, sandbox, interpreter), its
    imports, set-up, start (recover, resume), and the rest (first poll, turn, reply commit,
    host wake-up, delivery)."""
    try:
        found = READY_RE.findall(log.read_text(errors="replace"))
    except OSError:
        return None
    if not found:
        return None
    imports, setup, start, at = (float(x) for x in found[-1])
    to_main = (at - t0_wall) * 1000.0
    rest = total_ms - to_main - imports - setup - start
    return dict(zip(PHASES, (to_main, imports, setup, start, rest), strict=True))


async def _cold_starts(home: Home, n: int, backend: str, *, spare: bool = True,
                       settle_s: float = SETTLE_S, provider: str | None = None,
                       base_url: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``n`` cold starts, each on a quiet host (``settle_s`` after the last runner stopped,
    time for the spare process to be made again). ``provider``: the main group's model
    provider (its SDK, through the host's credential proxy to ``base_url``), else mock."""
    channel = SinkChannel()
    host = make_host(home, channel, settings=Settings(runner_idle_exit_s=600.0,
                                                      runner_backend=backend,
                                                      runner_spare=spare))  # fmt: skip
    if provider is not None:
        [group] = groups.list_agent_groups(host.db)
        groups.update_container_config(
            host.db, group.id, {"provider": provider, "settings": {"base_url": base_url}}
        )
    await host.start()
    freeze_heap()  # as `carapace run` does once the host is up
    spare_kib: list[int] = []
    samples: list[float] = []
    rss: list[int] = []
    pss: list[int] = []
    split: list[dict[str, float]] = []
    replies: list[object] = []
    try:
        for i in range(n + 1):
            channel.waiting = asyncio.get_running_loop().create_future()
            t0_wall = time.time()
            t0 = time.perf_counter()
            r = await host.route(event(f"hello {i}"))
            t1 = await asyncio.wait_for(channel.waiting, TIMEOUT_S)
            replies.append(channel.last_text)
            sid = r.routed[0].session_id
            if i > 0:  # the first one warms the page cache
                samples.append((t1 - t0) * 1000.0)
                session = host.sessions.get(sid)
                if session is not None:
                    log = host.sessions.paths(session).root / LOG_FILE
                    part = phases(log, t0_wall, samples[-1])
                    if part is not None:
                        split.append(part)
            await asyncio.sleep(0.3)  # idle now
            run = host.pool.running.get(sid)
            if run is not None and run.handle.pid is not None:
                tree = [run.handle.pid, *descendants(run.handle.pid)]
                rss.append(sum(rss_kib(p) for p in tree))
                pss.append(sum(pss_kib(p) for p in tree))
            await host.pool.stop(sid, "bench")
            await asyncio.sleep(settle_s)
            for starter in _spares.values():
                ready = starter._ready
                if spare and ready is not None:
                    spare_kib.append(rss_kib(ready.popen.pid))
    finally:
        await host.stop()
        host.close()
    return {"samples": samples, "rss": rss, "pss": pss, "note": host.backend_note,
            "replies": replies,
            "spare_kib": spare_kib, "split": split,
            "phases": {k: statistics.median(p[k] for p in split) for k in PHASES}
            if split else {}}  # fmt: skip


def _time_cmd(args: list[str], n: int) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        out.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(out)


def start_breakdown(n: int = 5) -> dict[str, float]:
    """Median ms of: the bare interpreter; the interpreter importing the runner's modules."""
    py = sys.executable
    bare = _time_cmd([py, "-c", "pass"], n)
    imports = _time_cmd([py, "-c", "import carapace.runner.__main__"], n)
    return {"interpreter_ms": bare, "imports_ms": imports - bare}


def outbound_insert(rows: int = 2000, runs: int = 3) -> tuple[float, float, float]:
    """The runner's reply insert (``Outbound.write``: one ``BEGIN IMMEDIATE`` transaction
    per row, seq allocated against the inbound side, as NanoClaw's ``writeMessageOut``;
    the inbound side's highest seq as the runner takes it, from its last poll, compat.md
    D4, not read from ``inbound.db`` per row as NanoClaw does),
    rows per second; the disk's floor for it in the same sitting (a bare one-row INSERT +
    commit with the same pragmas); and NanoClaw's ``writeMessageOut`` on the same disk
    (``bench/nanoclaw_ref.py``); medians of ``runs``, alternating."""
    from carapace.db.connection import connect
    from carapace.db.session import SessionPaths, init_session_folder
    from carapace.runner.inbound import Inbound
    from carapace.runner.outbound import Outbound

    content = {"text": "a reply of about the size of a chat message " * 3}
    rates: list[float] = []
    floor: list[float] = []
    nanoclaw: list[float] = []
    for _ in range(runs):
        nanoclaw.append(nanoclaw_ref.write_message_out(rows))
        with tempfile.TemporaryDirectory(prefix="carapace-bench-") as tmp:
            paths = SessionPaths(Path(tmp))
            init_session_folder(paths)
            inbound = Inbound(paths)
            inbound.max_seq()  # the runner's first poll
            out = Outbound(paths, inbound_max=inbound.known_max)
            t0 = time.perf_counter()
            for i in range(rows):
                out.write(id=f"bench-{i}", kind="chat", content=content,
                          platform_id="cli:local", channel_type="cli")  # fmt: skip
            rates.append(rows / (time.perf_counter() - t0))
            out.close()
            inbound.close()
            bare = connect(Path(tmp) / "floor.db", "session")
            bare.execute("CREATE TABLE t (id TEXT PRIMARY KEY, seq INTEGER, content TEXT)")
            text = json.dumps(content)
            t0 = time.perf_counter()
            for i in range(rows):
                bare.execute("INSERT INTO t VALUES (?, ?, ?)", (f"f-{i}", i, text))
            floor.append(rows / (time.perf_counter() - t0))
            bare.close()
    return statistics.median(rates), statistics.median(floor), statistics.median(nanoclaw)


SDK_REPLY = "hello from the fake API"
BENCH_KEYS = {"ANTHROPIC_API_KEY": "sk-ant-bench", "OPENAI_API_KEY": "sk-bench"}


def sdk_starts(tmp: str, n: int = 4) -> dict[str, dict[str, Any]]:
    """Cold starts and idle memory of runners with the real provider SDKs (``anthropic``,
    ``openai``), as users run them: through the host's credential proxy to a fake API on
    loopback (carapace.testing.fake_llm) that answers every request with a short text."""
    from carapace.testing.fake_llm import FakeLLMServer

    saved = {k: os.environ.get(k) for k in BENCH_KEYS}
    os.environ.update(BENCH_KEYS)  # the host's keys (its environment), never the runner's
    out: dict[str, dict[str, Any]] = {}
    try:
        with FakeLLMServer(default=SDK_REPLY) as srv:
            for provider, url in (("anthropic", srv.anthropic_base_url),
                                  ("openai", srv.openai_base_url)):  # fmt: skip
                home = Home.resolve(Path(tmp) / f"sdk-{provider}")
                out[provider] = asyncio.run(_cold_starts(home, n, "auto", provider=provider,
                                                         base_url=url))  # fmt: skip
                wrong = [r for r in out[provider]["replies"] if r != SDK_REPLY]
                if wrong:  # never a mock (or failed) start reported as the SDK's
                    raise RuntimeError(f"the {provider} runners did not answer through the "
                                       f"fake API: {wrong[0]!r}")  # fmt: skip
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"note": parts[0]["note"]}
    for key in ("samples", "rss", "pss", "spare_kib", "split"):
        out[key] = [x for p in parts for x in p[key]]
    split = out["split"]
    out["phases"] = {k: statistics.median(p[k] for p in split) for k in PHASES} if split else {}
    return out


NANOCLAW_OUTBOUND_ROWS_S = 1262.0  # spec/perf-anchors.md §3 (c), real writeMessageOut


def run_runner(n: int = 10) -> BenchResult:
    parts = start_breakdown()
    runs: dict[str, list[dict[str, Any]]] = {"auto": [], "cold": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="carapace-bench-") as tmp:
        for half, k in enumerate((n // 2, n - n // 2)):  # interleaved: drift hits all alike
            for name, backend, with_spare in (("cold", "auto", False), ("auto", "auto", True),
                                         ("plain", "subprocess", True)):  # fmt: skip
                home = Home.resolve(Path(tmp) / f"{name}{half}")
                runs[name].append(asyncio.run(_cold_starts(home, k, backend, spare=with_spare)))
        sdk = sdk_starts(tmp, max(1, min(4, n // 2)))
    auto, cold, plain = (_merge(runs[k]) for k in ("auto", "cold", "plain"))
    insert, insert_floor, insert_nanoclaw = outbound_insert()
    p50 = statistics.median(auto["samples"])
    p50_cold = statistics.median(cold["samples"])
    p50_plain = statistics.median(plain["samples"])
    rss = statistics.median(auto["rss"]) / 1024 if auto["rss"] else 0.0
    pss = statistics.median(auto["pss"]) / 1024 if auto["pss"] else 0.0
    spare = statistics.median(auto["spare_kib"]) / 1024 if auto["spare_kib"] else 0.0
    ph = auto["phases"]
    sdk_fig = {p: {"p50": statistics.median(r["samples"]),
                   "setup": r["phases"].get("setup_ms", 0.0),
                   "rss": statistics.median(r["rss"]) / 1024 if r["rss"] else 0.0,
                   "pss": statistics.median(r["pss"]) / 1024 if r["pss"] else 0.0}
               for p, r in sdk.items()}  # fmt: skip
    sdk_text = "; ".join(
        f"{p} p50 **{f['p50']:.0f} ms** (its set-up, the SDK's import included, "
        f"{f['setup']:.0f} ms), idle RSS **{f['rss']:.1f} MiB**, PSS {f['pss']:.1f} MiB"
        for p, f in sdk_fig.items()
    )
    split = (
        f"route → runner main {ph['to_main_ms']:.0f} ms (host prepare, start, sandbox, "
        f"interpreter), imports {ph['imports_ms']:.0f} ms, set-up {ph['setup_ms']:.0f} ms, "
        f"first turn + delivery {ph['turn_and_delivery_ms']:.0f} ms"
        if ph
        else "no split (runner start-up line not found)"
    )
    return BenchResult(
        "runner",
        f"cold start (first message → delivered reply, spawn included) p50 **{p50:.0f} ms**, "
        f"p90 {percentile(auto['samples'], 0.9):.0f} ms ({auto['note']}, spare process ready); "
        f"{split}; without a spare p50 {p50_cold:.0f} ms; without sandbox p50 "
        f"{p50_plain:.0f} ms; bare interpreter {parts['interpreter_ms']:.0f} ms, runner imports "
        f"alone {parts['imports_ms']:.0f} ms; idle runner memory (process tree) RSS "
        f"**{rss:.1f} MiB**, PSS {pss:.1f} MiB; the spare {spare:.1f} MiB RSS; outbound "
        f"insert **{insert:.0f} rows/s** (NanoClaw's `writeMessageOut` on this disk in the same "
        f"run, bench/nanoclaw_ref.py: **{insert_nanoclaw:.0f}**; "
        f"{NANOCLAW_OUTBOUND_ROWS_S:.0f} in its own sitting; this disk's floor now, a bare "
        f"INSERT + commit: {insert_floor:.0f}). With a real "
        f"provider's SDK (the figures above use the mock provider; here through the credential "
        f"proxy to a fake API on loopback, bwrap, spare ready): {sdk_text}",
        f"{len(auto['samples'])} + {len(cold['samples'])} + {len(plain['samples'])} cold "
        f"starts, {SETTLE_S:.1f} s apart; 3 × 2,000 inserts each way; "
        + ", ".join(f"{len(r['samples'])} with {p}" for p, r in sdk.items()),
        {
            "cold_p50_ms": round(p50, 1),
            "cold_p50_no_spare_ms": round(p50_cold, 1),
            "cold_p50_no_sandbox_ms": round(p50_plain, 1),
            **{k: round(v, 1) for k, v in parts.items()},
            **{f"split_{k}": round(v, 1) for k, v in ph.items()},
            "idle_rss_mib": round(rss, 1),
            "idle_pss_mib": round(pss, 1),
            "spare_rss_mib": round(spare, 1),
            "outbound_insert_rows_s": round(insert),
            "outbound_insert_floor_rows_s": round(insert_floor),
            "outbound_insert_nanoclaw_rows_s": round(insert_nanoclaw),
            **{
                f"{p}_{k}": round(v, 1)
                for p, f in sdk_fig.items()
                for k, v in (
                    ("cold_p50_ms", f["p50"]),
                    ("setup_ms", f["setup"]),
                    ("idle_rss_mib", f["rss"]),
                    ("idle_pss_mib", f["pss"]),
                )
            },
        },
        [
            Goal("cold start ≤ 100 ms p50", p50 <= 100.0),
            Goal("outbound insert ≥ NanoClaw's in the same run", insert >= insert_nanoclaw),
        ],
    ).finish()
