"""The test suite's guard against event loops left open (carapace/testing/loop_guard.py):
a file whose tests leave one fails, naming where it was made; closed ones, and loops a
file's fixture holds until its end, pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LEAKS = """
import asyncio

def test_makes_a_loop_and_forgets_it():
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))

def test_after_it():
    pass
"""

CLEAN = """
import asyncio
import pytest

@pytest.fixture(scope="module")
def kept():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()

def test_uses_the_modules_loop(kept):
    kept.run_until_complete(asyncio.sleep(0))

def test_asyncio_run_closes_its_own(kept):
    asyncio.run(asyncio.sleep(0))
"""


def _run(tmp_path: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "carapace.testing.loop_guard", "-p",
         "no:cacheprovider", "-q", str(tmp_path / name)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_a_file_that_leaves_a_loop_open_fails_at_its_end(tmp_path: Path) -> None:
    res = _run(tmp_path, "test_leaks.py", LEAKS)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "2 passed" in res.stdout and "1 error" in res.stdout, res.stdout
    assert "ERROR at teardown of test_after_it" in res.stdout
    assert "1 event loop(s) made in test_leaks.py left open" in res.stdout
    assert "in test_makes_a_loop_and_forgets_it" in res.stdout  # where it was made
    assert "PluggyTeardownRaisedWarning" not in res.stdout


def test_closed_loops_and_a_fixtures_loop_pass(tmp_path: Path) -> None:
    res = _run(tmp_path, "test_clean.py", CLEAN)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed" in res.stdout
