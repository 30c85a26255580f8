"""A short run of the chaos harness (bench/chaos.py): real host, real runners, SIGKILLs of
both, and a full disk when a tmpfs can be mounted. Nothing lost; duplicates at most one
per host kill."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def _chaos() -> Any:
    spec = importlib.util.spec_from_file_location("chaos_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["chaos_bench"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_short_chaos_run_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = _chaos().main(["--n", "30", "--chats", "3", "--runner-kills", "6", "--host-kills",
                          "1", "--duration", "8", "--disk-full", "2", "--settle", "90",
                          "--seed", "14", "--json"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rep["lost"] == 0, rep
    assert rep["duplicated"] <= rep["host_kills"], rep
    assert rep["host_kills"] == 1 and rep["messages"] == 30
    assert code == 0
