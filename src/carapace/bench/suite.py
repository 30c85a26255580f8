"""The benchmarks of ``carapace bench``, by name (imported lazily: each pulls in a host)."""

from __future__ import annotations

import sys
from typing import Any

from carapace.bench.common import BenchResult

NAMES = ("roundtrip", "fsyncs", "ingest", "burst", "concurrent", "scale", "delivery", "runner",
         "soak")  # fmt: skip
QUICK: dict[str, dict[str, Any]] = {
    "roundtrip": {"n": 50, "floor_n": 50},
    "fsyncs": {"n": 20},
    "ingest": {"n": 500, "n_live": 200},
    "burst": {"n": 500},
    "concurrent": {"chats": 10, "per_chat": 3},
    "scale": {"sessions": 100, "history": 100, "idle_s": 3.0},
    "delivery": {"rows": 200},
    "runner": {"n": 3},
    "soak": {"sessions": 300},
}


def command(
    name: str, *, quick: bool = False, as_json: bool = False, write_docs: bool = False
) -> list[str]:
    """The command line that runs benchmark ``name`` in an interpreter of its own (``carapace
    bench all`` runs each so: what one measures of its process, the soak's RSS, the
    runner's memory, does not carry what the ones before it left there)."""
    if name not in NAMES:
        raise ValueError(f"no benchmark {name!r}")
    argv = [sys.executable, "-m", "carapace", "bench", name]
    for key, value in (QUICK.get(name, {}) if quick else {}).items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv + (["--json"] if as_json else []) + (["--write-docs"] if write_docs else [])


def run(name: str, **kw: Any) -> BenchResult:
    if name == "roundtrip":
        from carapace.bench.host_benches import run_roundtrip

        return run_roundtrip(**kw)
    if name == "fsyncs":
        from carapace.bench.host_benches import run_fsyncs

        return run_fsyncs(**kw)
    if name == "ingest":
        from carapace.bench.host_benches import run_ingest

        return run_ingest(**kw)
    if name == "burst":
        from carapace.bench.host_benches import run_burst

        return run_burst(**kw)
    if name == "concurrent":
        from carapace.bench.host_benches import run_concurrent

        return run_concurrent(**kw)
    if name == "scale":
        from carapace.bench.scale import run_scale

        return run_scale(**kw)
    if name == "delivery":
        from carapace.bench.host_benches import run_delivery

        return run_delivery(**kw)
    if name == "runner":
        from carapace.bench.runner_bench import run_runner

        return run_runner(**kw)
    if name == "soak":
        from carapace.bench.soak import run_soak

        return run_soak(**kw)
    raise ValueError(f"unknown benchmark {name!r}")
