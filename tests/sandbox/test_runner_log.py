"""A session's runner log is bounded: at a runner's start a log past LOG_ROTATE_BYTES is
kept as ``.runner.log.1`` (replacing the one before) and a new one begun. Before, it grew by
~300 bytes a message for as long as the session lived. The host never opens it through a
link. Real files, a real runner process."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from carapace.db.session import SessionPaths, init_session_folder
from carapace.host.pool import RunnerSpec
from carapace.sandbox import process
from carapace.sandbox.process import LOG_FILE, SubprocessBackend, open_runner_log


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(process, "LOG_ROTATE_BYTES", 1000)
    return 1000


def test_a_log_past_the_bound_is_kept_once_and_a_new_one_begun(tmp_path: Path, small: int) -> None:
    log = tmp_path / LOG_FILE
    log.write_bytes(b"a" * 600)
    with open_runner_log(tmp_path) as fh:  # under the bound: appended to
        fh.write(b"b" * 600)
    assert log.read_bytes() == b"a" * 600 + b"b" * 600
    (tmp_path / f"{LOG_FILE}.1").write_bytes(b"older")
    with open_runner_log(tmp_path) as fh:  # past it: kept as .1, the older .1 replaced
        fh.write(b"new\n")
    assert (tmp_path / f"{LOG_FILE}.1").read_bytes() == b"a" * 600 + b"b" * 600
    assert log.read_bytes() == b"new\n"
    assert log.stat().st_mode & 0o777 == 0o600


def test_a_linked_log_is_refused_and_its_target_untouched(tmp_path: Path, small: int) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 5000)
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / LOG_FILE).symlink_to(target)
    with pytest.raises(OSError) as err:
        open_runner_log(folder)
    assert err.value.errno == errno.ELOOP
    assert target.read_bytes() == b"x" * 5000
    assert not (folder / f"{LOG_FILE}.1").exists()


def test_a_runner_start_rotates_its_sessions_long_log(tmp_path: Path, small: int) -> None:
    paths = SessionPaths.of(tmp_path / "data", "ag-1", "sess-log")
    init_session_folder(paths)
    agent = tmp_path / "groups" / "main"
    agent.mkdir(parents=True)
    old = b"an old line\n" * 200
    (paths.root / LOG_FILE).write_bytes(old)

    async def scenario() -> None:
        spec = RunnerSpec("sess-log", "ag-1", paths.root, agent, provider="mock",
                          idle_exit_s=0.2, env={"CARAPACE_TZ": "UTC"})  # fmt: skip
        handle = await SubprocessBackend(spare=False).start(spec)
        assert await asyncio.wait_for(handle.wait(), 60) == 0

    asyncio.run(scenario())
    assert (paths.root / f"{LOG_FILE}.1").read_bytes() == old
    text = (paths.root / LOG_FILE).read_text()
    assert "runner starting: session sess-log" in text and "an old line" not in text


def test_a_fifo_planted_as_the_log_is_refused_at_once(tmp_path: Path, small: int) -> None:
    """Where an agent can write its session folder (no sandbox), a FIFO in the log's place
    must not hold the host's start thread forever (an open for writing waits for a reader),
    nor a folder or a device take the runner's output."""
    os.mkfifo(tmp_path / LOG_FILE)
    with pytest.raises(OSError):
        open_runner_log(tmp_path)
    other = tmp_path / "other"
    (other / LOG_FILE).mkdir(parents=True)
    with pytest.raises(OSError):
        open_runner_log(other)
