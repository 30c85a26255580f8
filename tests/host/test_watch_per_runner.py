"""The host watches a session's folder while its runner runs, not after: kept, the watches
of every session that ever ran added up (a kernel inotify watch each, or a ``stat`` per
0.25 s poll each where inotify is missing). Nor does delivery keep an empty record per
session it has looked at. A real host, real runners, many chats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from carapace.bench.host_benches import SinkChannel, add_chats, event, make_host
from carapace.config import Home, Settings

CHATS = 12


def test_a_session_folder_is_watched_while_its_runner_runs_only(tmp_path: Path) -> None:
    channel = SinkChannel()
    host = make_host(Home(tmp_path / "home"), channel,
                     settings=Settings(runner_idle_exit_s=600.0))  # fmt: skip

    async def until(cond: object, what: str) -> None:
        for _ in range(3000):
            if callable(cond) and cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not in 30 s: {what}")

    async def scenario() -> tuple[int, int, int, int, int]:
        await host.start()
        try:
            chats = add_chats(host, CHATS)
            for chat in chats:
                await host.route(event("hello", chat))
            await until(lambda: channel.count >= CHATS, "every chat answered")
            assert host._watcher is not None
            live = len(host._watcher.paths())
            for sid in list(host.pool.running):
                await host.pool.stop(sid, "test")
            await until(lambda: not host.pool.running and not host._releasing,
                        "every runner ended")  # fmt: skip
            after = len(host._watcher.paths())
            records = len(host.delivery._records)  # nothing kept per session once written
            # a session that runs again is watched again: its reply comes on its commit, not
            # with the sweep a minute later
            await host.route(event("again", chats[0]))
            await until(lambda: channel.count >= CHATS + 1, "the second answer")
            again = len(host._watcher.paths())
            return live, after, again, channel.per_chat[chats[0]], records
        finally:
            await host.stop()
            host.close()

    live, after, again, answers, records = asyncio.run(scenario())
    assert live >= CHATS  # each live session's folder (the host may watch a few more)
    assert after == live - CHATS
    assert again == after + 1
    assert answers == 2
    assert records == 0
