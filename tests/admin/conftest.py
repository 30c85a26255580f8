"""Fixtures for the admin tests: a fresh home, a direct context, a stand-in host socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_helpers import StandInHost

from carapace.admin.direct import DirectContext, direct_context
from carapace.bootstrap import init_home
from carapace.config import Home
from carapace.db import groups


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "h")
    init_home(h)
    return h


@pytest.fixture
def ctx(home: Home) -> Iterator[DirectContext]:
    c = direct_context(home)
    yield c
    c.close()


@pytest.fixture
def main_id(ctx: DirectContext) -> str:
    g = groups.get_agent_group_by_folder(ctx.db, "main")
    assert g is not None
    return g.id


@pytest.fixture
def host(home: Home) -> Iterator[StandInHost]:
    server = StandInHost(home)
    yield server
    server.close()
