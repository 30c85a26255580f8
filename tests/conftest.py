"""Shared fixtures: a migrated central DB, a home, a fake clock. Every file lives in tmp_path."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

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
