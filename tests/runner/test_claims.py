"""A turn's claim is committed only when the turn lasts (runner/claims.py, issue 19)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.db.connection import connect
from carapace.db.session import SessionPaths
from carapace.runner import loop as loop_module
from carapace.runner.claims import DeferredClaims
from carapace.runner.config import RunnerConfig
from carapace.runner.loop import Runner
from carapace.runner.outbound import Outbound
from carapace.runner.providers.base import Message, ToolSpec, Turn
from carapace.testing.sessions import make_agent_dir, make_session, read_acks, write_chat
from carapace.watch import DirWatcher

LONG = 3600.0  # a delay no test reaches: the deadline is simulated by commit()


@pytest.fixture
def paths(tmp_path: Path) -> SessionPaths:
    return make_session(tmp_path, routing=("telegram", "chat-1", None))


@pytest.fixture
def out(paths: SessionPaths) -> Iterator[Outbound]:
    o = Outbound(paths, claim_delay_s=LONG)
    yield o
    o.close()


def runner(tmp_path: Path, paths: SessionPaths, provider: Any, delay: float) -> Runner:
    agent_dir = make_agent_dir(tmp_path)
    cfg = RunnerConfig.load(paths.root, agent_dir, provider="mock",
                            environ={"CARAPACE_TZ": "UTC"})  # fmt: skip
    r = Runner(cfg, provider, watcher=DirWatcher(use_inotify=False))
    r.outbound.claims.delay = delay
    r.start()
    return r


class Seer:
    """A provider that records what the host could read of the acks during the turn;
    ``wait_for_claim``: it answers only once the claim is committed (a long turn)."""

    name = "seer"

    def __init__(self, paths: SessionPaths, wait_for_claim: bool = False) -> None:
        self.paths = paths
        self.wait_for_claim = wait_for_claim
        self.seen: list[dict[str, str]] = []

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        deadline = time.monotonic() + 30.0
        while self.wait_for_claim and not read_acks(self.paths) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.seen.append(read_acks(self.paths))
        return Turn(text="ok")


def test_a_turn_that_ends_before_the_delay_never_commits_its_claim(
    tmp_path: Path, paths: SessionPaths
) -> None:
    write_chat(paths, "hello", id="m1")
    seer = Seer(paths)
    r = runner(tmp_path, paths, seer, LONG)
    try:
        assert r.step()
        assert seer.seen == [{}]  # the host saw no claim during the turn
        assert read_acks(paths) == {"m1": "completed"}
        assert r.outbound.claims.pending() == set()  # nothing left for the thread to do
        r.outbound.claims.commit()  # the delay passes after the turn ended
        assert read_acks(paths) == {"m1": "completed"}
        assert r.outbound.claims.pending() == set()
    finally:
        r.close()


def test_a_turn_that_lasts_has_its_claim_committed_by_the_thread(
    tmp_path: Path, paths: SessionPaths
) -> None:
    write_chat(paths, "hello", id="m1")
    seer = Seer(paths, wait_for_claim=True)
    r = runner(tmp_path, paths, seer, 0.01)
    try:
        assert r.step()
        assert seer.seen == [{"m1": "processing"}]
        assert read_acks(paths) == {"m1": "completed"}
    finally:
        r.close()


def test_a_runner_that_fails_in_a_turn_leaves_its_claim_for_the_try_count(
    tmp_path: Path, paths: SessionPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception out of the turn (a bug a message sets off) ends the runner through its
    close, which commits the claim: the host counts the try, so a message that kills every
    runner reaches the try limit instead of being taken again for ever."""
    write_chat(paths, "hello", id="m1")
    r = runner(tmp_path, paths, Seer(paths), LONG)

    def boom(*_a: Any, **_k: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(loop_module, "compose_system_prompt", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        r.run()
    assert read_acks(paths) == {"m1": "processing"}


def test_the_turns_first_output_carries_its_claim(out: Outbound, paths: SessionPaths) -> None:
    out.claim(["m1"])
    assert read_acks(paths) == {}
    out.write(id="o1", kind="chat", content={"text": "working on it"}, in_reply_to="m1")
    assert read_acks(paths) == {"m1": "processing"}  # committed with the message
    assert out.claims.pending() == set()
    out.claim(["m2"])
    out.set_tool("bash", 1000)
    assert read_acks(paths) == {"m1": "processing", "m2": "processing"}


def test_a_released_claim_is_never_written(out: Outbound, paths: SessionPaths) -> None:
    out.claim(["m1"])
    assert out.acked(["m1", "m2"]) == {"m1": "processing"}  # the runner's own view
    out.release(["m1"])
    out.claims.commit()
    assert read_acks(paths) == {}
    assert out.acked(["m1"]) == {}


def test_acks_rolled_back_keep_the_claim_pending(out: Outbound, paths: SessionPaths) -> None:
    out.claim(["m1"])
    with pytest.raises(RuntimeError), out.atomic():
        out.complete(["m1"])
        raise RuntimeError("the reply's commit failed")
    out.complete(["other"])  # a later commit does not take m1's end for done
    out.claims.commit()
    assert read_acks(paths) == {"m1": "processing", "other": "completed"}


def test_a_claim_committed_late_never_replaces_the_turns_end(paths: SessionPaths) -> None:
    """The thread's commit may run while the turn's end commits: it only adds claims."""
    Outbound(paths, claim_delay_s=0).close()  # the schema
    claims = DeferredClaims(
        lambda: connect(paths.outbound, "session", check_same_thread=False), LONG
    )
    claims.add(["m1", "m2"], "2026-12-06 08:00:00")
    conn = connect(paths.outbound, "session")
    conn.execute("INSERT INTO processing_ack VALUES ('m1', 'completed', '2026-12-06 08:00:01')")
    conn.close()
    claims.commit()
    claims.close()
    assert read_acks(paths) == {"m1": "completed", "m2": "processing"}


def test_a_claim_at_delay_zero_is_committed_at_once(paths: SessionPaths) -> None:
    o = Outbound(paths, claim_delay_s=0)
    try:
        o.claim(["m1"])
        assert read_acks(paths) == {"m1": "processing"}
        assert o.claims.pending() == set()
    finally:
        o.close()


def test_a_runner_without_threads_still_answers_and_claims(
    tmp_path: Path, paths: SessionPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task limit reached (Linux counts threads): the claim is committed at once and the
    heartbeat is still touched; the turn runs and the runner closes cleanly."""
    write_chat(paths, "hello", id="m1")
    seer = Seer(paths)
    r = runner(tmp_path, paths, seer, LONG)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    os.utime(paths.root / ".heartbeat", ns=(0, 0))
    try:
        assert r.step()
        assert seer.seen == [{"m1": "processing"}]  # committed at once, no thread to wait
        assert read_acks(paths) == {"m1": "completed"}
        assert (paths.root / ".heartbeat").stat().st_mtime_ns > 0  # touched in the turn
    finally:
        r.close()  # no thread to join: closes all the same
