"""Typing kept alive while an agent works (host/typing.py, spec/host.md §3.11): started by
a message that wakes a session, stopped by a delivered reply or the runner's exit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from carapace.channels.cli import CliChannel
from carapace.channels.fake import FakeChannel
from carapace.host.typing import TypingKeeper


async def _until(cond: Callable[[], bool], what: str) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(wait(), 10)


def test_typing_starts_refires_for_a_new_chat_and_stops(tmp_path: Path) -> None:
    fake = FakeChannel()
    keeper = TypingKeeper({"fake": fake, "cli": CliChannel(tmp_path / "s")},
                          lambda sid: None, lambda: datetime.now(UTC))  # fmt: skip

    async def go() -> None:
        keeper.start("s1", "fake", "chat-1", None)
        await _until(lambda: fake.typing == [("chat-1", None)], "first typing")
        keeper.start("s1", "fake", "chat-2", "t")  # already typing: one fire for the new chat
        await _until(lambda: ("chat-2", "t") in fake.typing, "typing in the new chat")
        assert list(keeper.active) == ["s1"]
        keeper.stop("s1")
        assert keeper.active == {}
        keeper.start("s2", "cli", "local", None)  # the CLI shows no typing: nothing starts
        assert keeper.active == {}
        keeper.start("s3", "fake", "chat-3", None)
        await keeper.stop_all()
        assert keeper.active == {}

    asyncio.run(go())
