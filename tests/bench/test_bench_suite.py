"""The bench suite's own plumbing: the docs table, the loop-lag probe, the soak's leak check
(no timings)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from carapace.bench.common import BenchResult, Goal, LoopProbe, write_suite_rows
from carapace.bench.floor import measure_floor


def _result(name: str, summary: str, user: str = "root") -> BenchResult:
    r = BenchResult(name, summary, "3 samples", {"x": 1}, [Goal("x ≤ 2", True)])
    r.user = user
    return r.finish()


def test_suite_rows_replace_their_own_line_and_keep_other_sections(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Egress proxy\n\nproxy table\n", encoding="utf-8")
    write_suite_rows([_result("roundtrip", "first"), _result("scale", "big")], doc)
    write_suite_rows([_result("roundtrip", "second"), _result("roundtrip", "u", "user (b)")], doc)
    text = doc.read_text(encoding="utf-8")
    assert "## Egress proxy\n\nproxy table" in text and "intro" in text
    assert "first" not in text and "second" in text and "big" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`roundtrip`", "`roundtrip`", "`scale`"]
    assert "x ≤ 2: met" in rows[0]


def test_loop_probe_sees_a_blocked_loop() -> None:
    async def main() -> tuple[float, float | None, float, float | None]:
        probe = LoopProbe().start()
        await asyncio.sleep(0.02)
        quiet = await probe.stop()
        quiet_unqueued = probe.longest_unqueued_ms
        probe.start()
        time.sleep(0.05)  # the loop is blocked for the whole measurement
        return quiet, quiet_unqueued, await probe.stop(), probe.longest_unqueued_ms

    quiet, quiet_unqueued, blocked, unqueued = asyncio.run(main())
    assert blocked >= 45.0  # 50 ms blocked, less the 1 ms interval
    # a loop blocked in a call (not waiting for a CPU) keeps all of it in the split; a quiet
    # loop's stalls on a loaded machine are its thread waiting for a CPU (once 68 ms in a
    # 20 ms window under the parallel suite), which the split takes out
    # (the blocked window's own wait for a CPU after the sleep is taken out too: 5 ms of it
    # once left 44.98 of 50 under the parallel suite, so half of the 50 is the bar)
    if os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"):
        assert unqueued is not None and unqueued >= 25.0
        assert quiet_unqueued is not None and quiet_unqueued < 45.0
    else:
        assert blocked > quiet


def test_floor_round_trips_through_a_second_process(tmp_path: Path) -> None:
    samples = measure_floor(tmp_path, 3)
    assert len(samples) == 3 and all(s > 0 for s in samples)


@pytest.mark.parametrize("leak", [False, True], ids=["as-is", "watches-kept"])
def test_the_soak_sees_what_a_host_keeps_per_session(
    leak: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real host, real runners, 6 sessions in 3 batches; with the watch of an ended runner's
    folder kept (the bug the first soak found) its goal is not met."""
    from carapace.bench.soak import run_soak
    from carapace.host import host_watch

    if leak:
        monkeypatch.setattr(host_watch, "unwatch_session", lambda host, root: None)
    result = run_soak(sessions=6, batch=2)
    rows = result.figures["rows"]
    assert [r["served"] for r in rows] == [2, 4, 6]
    assert all(r["live"] == 0 for r in rows)
    watched = {g.text: g.met for g in result.goals}["no folder watched without a live runner"]
    assert watched is (not leak)
    assert result.figures["watched_max"] == (6 if leak else 0)


def test_sdk_cold_starts_answer_through_the_real_sdks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench runner``'s SDK series: each runner answers through its provider's SDK and
    the credential proxy (the fake API's text comes back); a runner that answered any
    other way (the mock provider, an error) stops the bench instead of being reported."""
    from carapace.bench import runner_bench

    out = runner_bench.sdk_starts(str(tmp_path / "a"), 1)
    for provider in ("anthropic", "openai"):
        got = out[provider]
        assert got["replies"] == [runner_bench.SDK_REPLY] * 2, got["replies"]
        assert len(got["samples"]) == 1 and got["rss"] and got["rss"][0] > 0

    async def mock_starts(*args: object, **kw: object) -> dict[str, object]:
        return {"replies": ['Mock reply (no model configured ...): "hello 0"']}

    monkeypatch.setattr(runner_bench, "_cold_starts", mock_starts)  # a mock runner's answer
    with pytest.raises(RuntimeError, match="did not answer through the fake API: 'Mock reply"):
        runner_bench.sdk_starts(str(tmp_path / "b"), 1)


def test_the_nanoclaw_reference_writes_as_nanoclaw_does(tmp_path: Path) -> None:
    """``bench/nanoclaw_ref.py`` (the same-run baseline of the ingest and outbound-insert
    goals) writes what NanoClaw's functions write: even inbound seqs from 2, pending
    rows, ``last_active`` updated; odd outbound seqs above the inbound side's highest."""
    import sqlite3

    from carapace.bench import nanoclaw_ref

    assert nanoclaw_ref.write_session_message(20, folder=tmp_path) > 0
    inb = sqlite3.connect(tmp_path / "session" / "inbound.db")
    rows = inb.execute("SELECT seq, status, series_id = id FROM messages_in ORDER BY seq")
    assert rows.fetchall() == [(2 * i, "pending", 1) for i in range(1, 21)]
    inb.close()
    central = sqlite3.connect(tmp_path / "v2.db")
    assert central.execute("SELECT last_active FROM sessions").fetchone()[0]
    central.close()
    assert nanoclaw_ref.write_message_out(5, folder=tmp_path) > 0
    out = sqlite3.connect(tmp_path / "session" / "outbound.db")
    assert [r[0] for r in out.execute("SELECT seq FROM messages_out ORDER BY seq")] == [
        41,
        43,
        45,
        47,
        49,
    ]
    out.close()


def test_the_round_trip_says_where_its_time_goes(tmp_path: Path) -> None:
    """``bench roundtrip`` splits each warm round trip at the two moments the host sees:
    its message durable in the session's file, and the runner's reply committed. The
    three parts are positive and each is a part of a round trip."""
    import asyncio

    from carapace.bench.host_benches import _roundtrip
    from carapace.config import Home

    r = asyncio.run(_roundtrip(Home.resolve(tmp_path / "h"), 5))
    assert r["split_n"] >= 3  # (a round trip whose marks fell out of order is left out)
    stored, runner, delivery = r["split"]
    assert stored > 0 and runner > 0 and delivery > 0
    assert max(stored, runner, delivery) <= max(r["samples"]) + 1e-6


def test_the_floor_is_measured_in_blocks_between_the_runs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The floor's processes stay up through ``bench roundtrip`` and its trips are made in
    blocks between blocks of the run's own (one before each, one after the last), so the
    machine's drift meets both; the counts asked for are the counts made."""
    from carapace.bench import host_benches
    from carapace.bench.floor import Floor
    from carapace.config import Home

    order: list[str] = []

    class Recording(Floor):
        def trips(self, n: int) -> list[float]:
            order.append(f"floor {n}")
            return super().trips(n)

    real = host_benches.SinkChannel.deliver

    async def deliver(self: Any, *a: Any, **kw: Any) -> Any:
        order.append("ours")
        return await real(self, *a, **kw)

    monkeypatch.setattr(host_benches.SinkChannel, "deliver", deliver)
    floor = Recording(tmp_path / "floor")
    order.clear()  # (its warming trip)
    try:
        r = asyncio.run(host_benches._roundtrip(Home.resolve(tmp_path / "h"), 6, floor=floor,
                                                floor_n=14))  # fmt: skip
    finally:
        floor.close()
    assert len(r["samples"]) == 6 and len(r["floor"]) == 14
    # the cold trip (not counted), then floor, ours, floor, ..., ours, floor: 7 and 6 blocks
    assert order[0] == "ours" and order[2::2] == ["ours"] * 6
    assert [w.split()[0] for w in order[1::2]] == ["floor"] * 7
    assert sum(int(w.split()[1]) for w in order[1::2]) == 14


def test_every_quick_size_is_an_option_of_its_command() -> None:
    from carapace.bench import suite
    from carapace.commands.host import bench

    assert set(suite.QUICK) == set(suite.NAMES)
    for name in suite.NAMES:
        params = {p.name for p in bench.commands[name].params}
        assert set(suite.QUICK[name]) <= params, name
        assert {"as_json", "write_docs"} <= params, name
    with pytest.raises(ValueError, match="no benchmark"):
        suite.command("nonsense")


def test_bench_all_runs_each_benchmark_in_an_interpreter_of_its_own(tmp_path: Path) -> None:
    # `bench all` runs this command line per benchmark: a fresh process, so what one
    # benchmark measures of its process (the soak's RSS) holds nothing of the one before
    import json
    import subprocess
    import sys

    from carapace.bench import suite

    argv = suite.command("burst", quick=True, as_json=True)
    assert argv[:5] == [sys.executable, "-m", "carapace", "bench", "burst"]
    assert argv[5:] == ["--n", "500", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "burst" and result["samples"].startswith("500 messages")
    assert not (tmp_path / "docs").exists()  # no --write-docs: nothing written


STRACE_SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 88.51    0.008239          72       113           fdatasync
 10.00    0.000900          60        15         2 fsync
  1.49    0.000170          10        17           openat
------ ----------- ----------- --------- --------- ----------------
100.00    0.009309          72       145         2 total
"""


def test_fsyncs_are_read_from_a_strace_summary() -> None:
    """A normal user may not read ``perf``'s syscall tracepoints; ``bench fsyncs`` then
    counts with ``strace -f -c``: fsync and fdatasync rows only (failed calls included,
    the errors column is optional), not the total, not other calls."""
    from carapace.bench.host_benches import strace_fsyncs

    assert strace_fsyncs(STRACE_SUMMARY) == 128
    assert strace_fsyncs(STRACE_SUMMARY.replace("fsync\n", "fstat\n")) == 113
    header = "\n".join(STRACE_SUMMARY.splitlines()[:2])
    assert strace_fsyncs(header) == 0  # a summary without a sync
    assert strace_fsyncs("strace: exec: No such file or directory\n") is None


def test_fsyncs_are_counted_with_strace_where_perf_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``perf`` missing (or refused, as for a normal user): the run is counted by ``strace
    -f``, the runner's own syncs included (its process is a child of the host's)."""
    import shutil

    from carapace.bench import host_benches

    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "perf" else real_which(name))
    one, six = host_benches._count_fsyncs(1), host_benches._count_fsyncs(6)
    assert one is not None and six is not None
    assert one[1] == six[1] == "strace -f"
    # per round trip (2026-12-07, seen per process): the host's four (a lone message's
    # durable commit and its journal's sync) and the runner's three (its turn's commit);
    # without the runner's it would be four
    assert (six[0] - one[0]) / 5 >= 5
