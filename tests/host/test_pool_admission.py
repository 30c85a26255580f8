"""Start admission (issue 19): at most ``max_starting`` runners are being prepared and
launched at once; the other sessions holding a slot wait in FIFO order, none is lost, and a
session stopped while it waits is never started. A real pool over a backend whose starts
the test releases one by one (no clocks, no sleeps)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.host.pool import FakeBackend, FakeHandle, RunnerPool
from carapace.sandbox.process import RunnerHandle, RunnerSpec


@dataclass
class GatedBackend(FakeBackend):
    """A fake backend whose ``start`` of each session waits until the test releases it."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    inflight: list[str] = field(default_factory=list)
    most: int = 0
    entered: list[str] = field(default_factory=list)

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        sid = spec.session_id
        self.entered.append(sid)
        self.inflight.append(sid)
        self.most = max(self.most, len(self.inflight))
        gate = self.gates.setdefault(sid, asyncio.Event())
        try:
            await gate.wait()
        finally:
            self.inflight.remove(sid)
        self.started.append(spec)
        handle = FakeHandle()
        self.handles[sid] = handle
        return handle

    def release(self, sid: str) -> None:
        self.gates.setdefault(sid, asyncio.Event()).set()


def _spec(sid: str) -> RunnerSpec:
    return RunnerSpec(sid, "ag", Path("/nonexistent") / sid, Path("/nonexistent"))


async def _settle() -> None:
    """Let every task that can make progress do so (a bounded number of loop turns)."""
    for _ in range(50):
        await asyncio.sleep(0)


def _pool(backend: FakeBackend, **kw: object) -> RunnerPool:
    return RunnerPool(backend, prepare=kw.pop("prepare", _spec),  # type: ignore[arg-type]
                      on_exit=lambda s, e: None, now=lambda: datetime.now(UTC),
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def test_at_most_k_runners_start_at_once_in_fifo_order_and_none_is_lost() -> None:
    backend = GatedBackend()
    ids = [f"s{i}" for i in range(10)]

    async def scenario() -> tuple[list[str], list[int], list[str]]:
        pool = _pool(backend, max_runners=10, max_starting=3)
        for sid in ids:
            pool.wake(sid)
        await _settle()
        first = list(backend.inflight)
        counts = [pool.starting()]
        # release out of order: the freed places go to the next in wake order
        for sid in ["s1", "s0", "s2", "s4", "s3", "s5", "s6", "s7", "s8", "s9"]:
            backend.release(sid)
            await _settle()
            pool.runner_ready(sid)  # its first commit: it is up
            await _settle()
            counts.append(len(backend.inflight))
        assert sorted(pool.running) == sorted(ids)
        assert pool.spawning() == []
        await pool.stop_all()
        return first, counts, backend.entered

    first, counts, entered = asyncio.run(scenario())
    assert first == ["s0", "s1", "s2"]  # only K were let in, the first K woken
    assert backend.most == 3
    assert max(counts) == 3
    assert entered == ids  # FIFO: started in the order they were woken
    assert [s.session_id for s in backend.started] == ["s1", "s0", "s2", "s4", "s3", *ids[5:]]


def test_a_session_stopped_while_waiting_to_start_is_never_started() -> None:
    backend = GatedBackend()

    async def scenario() -> tuple[bool, list[str]]:
        pool = _pool(backend, max_runners=5, max_starting=1)
        for sid in ("a", "b", "c"):
            pool.wake(sid)
        await _settle()
        assert backend.inflight == ["a"]
        stop_b = asyncio.get_running_loop().create_task(pool.stop("b", "test"))
        await _settle()
        backend.release("a")
        await _settle()
        backend.release("c")
        await _settle()
        stopped = await stop_b
        running = sorted(pool.running)
        await pool.stop_all()
        return stopped, running

    stopped, running = asyncio.run(scenario())
    assert stopped is False  # nothing was running for it
    assert running == ["a", "c"]
    assert backend.entered == ["a", "c"]  # "b" never reached the backend


def test_a_failed_spawn_hands_its_slot_to_queued_work_at_once() -> None:
    """A spawn that comes to nothing (the session went away, the backend refused) frees its
    slot; the next queued session takes it without waiting for some runner to exit."""
    backend = FakeBackend()

    def prepare(sid: str) -> RunnerSpec | None:
        return None if sid == "gone" else _spec(sid)

    async def scenario() -> list[str]:
        pool = _pool(backend, max_runners=1, prepare=prepare)
        pool.wake("gone")
        pool.wake("next")  # cap full (the spawn of "gone" holds the slot): queued
        assert pool.queued() == ["next"]
        await _settle()
        running = sorted(pool.running)
        await pool.stop_all()
        return running

    assert asyncio.run(scenario()) == ["next"]


def test_a_launched_runner_keeps_its_place_until_it_is_up() -> None:
    """A runner's start-up (imports) is CPU work: a launched runner keeps its place in the
    start gate until its first commit (``runner_ready``) or its exit; then the next session
    in line starts."""
    backend = FakeBackend()

    async def scenario() -> list[list[str]]:
        pool = _pool(backend, max_runners=10, max_starting=1)
        seen = []
        for sid in ("a", "b", "c"):
            pool.wake(sid)
        await _settle()
        seen.append(sorted(pool.running))  # "a" launched, not up: the others wait
        assert pool.settling() == 1
        pool.runner_ready("a")  # its first commit
        await _settle()
        seen.append(sorted(pool.running))
        backend.handles["b"].exit(1)  # "b" dies before it is up: its place is free too
        await _settle()
        seen.append(sorted(pool.running))
        await pool.stop_all()
        return seen

    assert asyncio.run(scenario()) == [["a"], ["a", "b"], ["a", "c"]]


def test_a_runner_that_never_commits_frees_its_place_after_settle_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from carapace.host import pool as pool_mod

    monkeypatch.setattr(pool_mod, "SETTLE_S", 0.0)  # the bound itself, not its length
    backend = FakeBackend()

    async def scenario() -> list[str]:
        pool = _pool(backend, max_runners=10, max_starting=1)
        pool.wake("quiet")
        pool.wake("next")
        await _settle()
        running = sorted(pool.running)
        await pool.stop_all()
        return running

    assert asyncio.run(scenario()) == ["next", "quiet"]
