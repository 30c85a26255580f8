"""Shared fixtures: a migrated central DB, a home, a fake clock. Every file lives in tmp_path."""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.config import Home
from carapace.db.central import open_central
from carapace.timefmt import FakeClock

# every event loop a test file makes is closed by the end of that file (else the file's last
# teardown fails): carapace/testing/loop_guard.py
pytest_plugins = ["carapace.testing.loop_guard"]


@pytest.fixture
def central(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = open_central(tmp_path / "data" / "v2.db")
    yield conn
    conn.close()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``CI=true`` the sandbox tests must run: a missing or unusable bubblewrap fails
    the whole run instead of skipping them (a green CI that skipped the attacks is a lie)."""
    import os

    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    from carapace.sandbox import bwrap_unusable_reason

    reason = bwrap_unusable_reason()
    if reason is not None:
        pytest.exit(f"CI=true but bubblewrap is unusable: {reason}", returncode=3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    """Under ``CI=true`` a test skipped for want of bubblewrap is a failure. (Changing the
    report in ``pytest_runtest_logreport`` is too late: the run was still counted a skip and
    exited 0; tests/test_ci_skips.py checks this hook.)"""
    import os

    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    assert isinstance(report, pytest.TestReport)
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes") or not report.skipped:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if "bubblewrap" in reason or "bwrap" in reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true and this sandbox test was skipped: {reason}"
