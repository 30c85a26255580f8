"""No orphaned runner after an early kill of its bwrap wrapper (issue 14 item 8), with real
bubblewrap: ``--die-with-parent`` takes hold only after bwrap's child started, so a wrapper
killed in its first milliseconds used to leave the runner serving on, beside the next one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

from carapace.db.session import SessionPaths, init_session_folder
from carapace.host.pool import RunnerSpec
from carapace.runner import lifeline
from carapace.sandbox import BwrapBackend, bwrap_unusable_reason

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")


def processes_naming(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@needs_bwrap
def test_runner_dies_with_a_wrapper_killed_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as a normal user: no per-runner cgroup whose removal would kill what is left
    from carapace.sandbox import process as process_mod
    from carapace.sandbox import spare as spare_mod

    monkeypatch.setattr(process_mod, "runner_cgroup", lambda *_a, **_k: None)
    monkeypatch.setattr(spare_mod, "runner_cgroup", lambda *_a, **_k: None)
    data = tmp_path / "data"
    agent = tmp_path / "groups" / "main"
    agent.mkdir(parents=True)
    backend = BwrapBackend(tmp_path, network=False, pass_env=())
    rng = random.Random(14)
    marks: list[str] = []

    async def scenario() -> None:
        for i in range(8):
            sid = f"sess-orphan{i}"
            paths = SessionPaths.of(data, "ag-1", sid)
            init_session_folder(paths)
            marks.append(str(paths.root))
            spec = RunnerSpec(sid, "ag-1", paths.root, agent, provider="mock",
                              idle_exit_s=600, env={"CARAPACE_TZ": "UTC"})  # fmt: skip
            handle = await backend.start(spec)
            await asyncio.sleep(rng.uniform(0, 0.02))  # the kill lands in the first ms
            assert handle.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)  # the wrapper only, as a crash would
            await asyncio.wait_for(handle.wait(), 30)

    asyncio.run(scenario())
    deadline = time.monotonic() + 60  # generous: a loaded machine starts Python slowly
    left = [p for m in marks for p in processes_naming(m)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for m in marks for p in processes_naming(m)]
    for pid in left:  # ours: never leave them running when the test fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == [], "sandbox process(es) outlived their killed bwrap wrapper"


def test_lifeline_parse_refuses_junk() -> None:
    assert lifeline.parse("5,6") == (5, 6)
    for raw in (None, "", "5", "a,b", "5,6,7", "-1,2", "99999999,1"):
        assert lifeline.parse(raw) is None
    env = {"OTHER": "x"}
    assert lifeline.watch(env) is False and env == {"OTHER": "x"}
