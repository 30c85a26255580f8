"""POSIX locks belong to the process: closing *any* descriptor of a file drops every lock
the process holds on it, so one raw open and close of a SQLite file by the host (a check
of the file, a header read) lets a runner commit under a read another thread has under
way (a torn read; the outbox check did this until issue 19's session 25). SQLite's own
connections share their locks and never do it. So the host, at work, never opens a
``*.db`` file itself: this runs a live host with a real runner (three round trips, a
sweep, a stop) under an audit hook that sees every ``open`` (and a wrapper of ``safefs``'s
``openat2``, a ctypes call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("probe_raw_db_opens.py")


def test_a_host_at_work_never_opens_a_database_file_itself(tmp_path: Path) -> None:
    env = {**os.environ, "CARAPACE_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(PROBE), str(tmp_path / "home")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(out["replies"]) == 3 and all(out["replies"])
    assert out["host"] == []
    # the hook is live: the deliberate raw opens at the end were seen, both ways
    assert [p.split()[0] for p in out["probe"]] == ["open", "openat2"]
    assert all(p.endswith("outbound.db") for p in out["probe"])
