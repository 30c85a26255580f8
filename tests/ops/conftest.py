"""Fixtures for operations tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ops_rig import LiveHost

from carapace.config import Home


@pytest.fixture
def live_host(tmp_path: Any) -> Iterator[LiveHost]:
    h = LiveHost(Home(tmp_path / "home"))
    yield h
    h.close()
