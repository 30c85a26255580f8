"""A short run of the chaos harness (``carapace bench chaos``): real host, real runners, SIGKILLs of
both, and a full disk when a tmpfs can be mounted. Nothing lost; duplicates at most one
per host kill."""

from __future__ import annotations

import json

import pytest

from carapace.bench import chaos


def test_short_chaos_run_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = chaos.main(["--n", "30", "--chats", "3", "--runner-kills", "6", "--host-kills",
                          "1", "--duration", "8", "--disk-full", "2", "--settle", "90",
                          "--seed", "14", "--json"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rep["lost"] == 0, rep
    assert rep["duplicated"] <= rep["host_kills"], rep
    assert rep["host_kills"] == 1 and rep["messages"] == 30
    assert code == 0
