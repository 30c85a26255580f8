"""Contract driver for the local CLI channel: the person is a client on ``cli.sock``.

The CLI has one chat (``local``), no groups, threads, files, edits, reactions, buttons or
typing; a message whose routing failed is not offered again (the client gets no ack and
says it again itself). Deliveries with no client connected raise ``ChannelUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from carapace.channels.base import ChannelAdapter
from carapace.channels.cli import CliChannel

from ..contract import SentItem, until


class CliDriver:
    channel_type = "cli"
    caps: frozenset[str] = frozenset()
    max_text: int | None = None

    def __init__(self) -> None:
        self.sock: Path | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.adapter: CliChannel | None = None

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        self.sock = tmp_path / "cli.sock"
        await self._disconnect()
        self.adapter = CliChannel(self.sock)
        return self.adapter

    async def _connect(self) -> None:
        if self.writer is not None:
            return
        assert self.sock is not None
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.sock))
        self.writer.write(b'{"type": "hello", "mode": "chat"}\n')
        await self.writer.drain()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.reader is not None
        while line := await self.reader.readline():
            obj = json.loads(line)
            if obj.get("type") == "message":
                self.received.append(obj)

    async def _disconnect(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        self.reader = self.writer = self.task = None

    async def stop(self) -> None:
        await self._disconnect()

    async def user_says(self, text: str, *, chat: str, user: str, thread: str | None = None,
                        mention: bool = False, file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        assert chat == "dm" and thread is None and file is None
        await self._connect()
        assert self.writer is not None
        line = {"text": text, "senderId": self.user_id(user), "sender": user}
        self.writer.write((json.dumps(line) + "\n").encode())
        await self.writer.drain()

    def chat_id(self, chat: str) -> str:
        return "local"

    def user_id(self, user: str) -> str:
        return f"cli:{user}"

    def thread_id(self, chat: str, thread: str) -> str:
        raise NotImplementedError("the CLI has no threads")

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]:
        out = []
        for obj in self.received:
            content = obj.get("content")
            text = obj.get("text") or ""
            if isinstance(content, dict) and content.get("type") == "ask_question":
                text = str(content.get("text") or "")
            out.append(SentItem(str(obj.get("id")), str(text), raw=obj))
        return out

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None:
        raise NotImplementedError("the CLI has no buttons")

    async def make_unreachable(self, chat: str) -> None:
        await self._disconnect()
        adapter = self.adapter
        assert adapter is not None

        async def gone() -> bool:
            return not adapter.clients  # the channel notices the closed socket on its read

        await until(gone, "the CLI client to be gone")

    async def typing_shown(self, chat: str) -> int:
        return 0


DRIVER = CliDriver
