from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from web_rig import WebRig

HOOKS = '[web.hooks.ci]\nagent = "main"\nmax_body_bytes = 2048\n'


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[WebRig]:
    r = WebRig(tmp_path, hooks=HOOKS)
    try:
        yield r
    finally:
        r.close()
