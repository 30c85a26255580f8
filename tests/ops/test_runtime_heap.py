"""``carapace run`` freezes the heap before the host starts and once it is up (issue 19):
what is alive then is no longer walked by full collections, and garbage made later is
still collected."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import weakref
from pathlib import Path
from typing import Any

import pytest

from carapace.ops.runtime import freeze_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_freeze_heap_takes_what_lives_out_of_the_collectors_walks() -> None:
    gc.unfreeze()
    alive = _Node()
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        assert alive not in gc.get_objects()  # frozen: not in any generation
        later = _Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None  # a cycle made after the freeze is collected as before
    finally:
        gc.unfreeze()


def test_carapace_run_freezes_the_heap_before_the_host_starts_and_once_it_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The imports and the host's construction leave the process's long-lived objects in
    the collector's generations; a full collection during the start stalled the loop 7-10
    ms with 1,000 sessions (``bench scale``). So ``carapace run`` freezes before it, too."""
    from carapace.bootstrap import init_home
    from carapace.commands import host as command
    from carapace.config import Home
    from carapace.host.host import Host
    from carapace.ops import runtime

    home = Home(tmp_path / "home")
    init_home(home)
    seen: list[str] = []
    monkeypatch.setattr(runtime, "freeze_heap", lambda: seen.append("freeze"))
    real_start = Host.start

    async def start(self: Host, *args: Any, **kwargs: Any) -> None:
        seen.append("start")
        await real_start(self, *args, **kwargs)
        seen.append("up")
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)  # stop

    monkeypatch.setattr(Host, "start", start)
    asyncio.run(command._run(home))
    assert seen == ["freeze", "start", "up", "freeze"]
