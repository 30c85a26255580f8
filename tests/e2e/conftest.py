"""The ``e2e`` fixture: a fresh, initialised home and cleanup of what the test started."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import E2E


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    env = E2E(tmp_path)
    r = env.cli("init")
    assert r.returncode == 0, r.stderr
    # these tests are about conversations, approvals and admin, not the sandbox (tests/sandbox)
    env.write_settings('runner_backend = "subprocess"\n')
    try:
        yield env
    finally:
        if env.host is not None and env.host.poll() is None:
            env.host.kill()
            env.host.wait(5)
        for pidfile in (env.home / "data" / "v2-sessions").glob("*/*/.runner.pid"):
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
