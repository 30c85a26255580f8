"""Shared fixtures: a migrated central DB, a home, a fake clock. Every file lives in tmp_path."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _pytest.reports import TestReport

from carapace.config import Home
from carapace.db.central import open_central
from carapace.timefmt import FakeClock


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


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    """Under ``CI=true`` a sandbox test skipped for want of a usable bubblewrap fails the run
    (CI must not go green with the sandbox tests skipped); elsewhere it stays a skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    assert isinstance(report, TestReport)
    longrepr = report.longrepr
    reason = str(longrepr[-1] if isinstance(longrepr, tuple) else longrepr).lower()
    if in_ci() and report.skipped and ("bubblewrap" in reason or "bwrap" in reason):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true and this sandbox test was skipped: {report.longrepr}. "
            "Install a usable bubblewrap (make sandbox-tools as root)."
        )
