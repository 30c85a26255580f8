"""Contract driver for the web chat channel (``carapace.web.channel``). The "platform" is the
browser page: the driver types through the adapter's ``user_says`` and clicks through its
``click`` (what the page's POSTs do), and reads what the page shows from ``data/web.db`` (the
history the page loads) and the live event stream (typing).

Left out, as the web page truly lacks them: ``threads`` and ``mention`` (a web chat is a
private conversation with one agent group; there are no group chats to be addressed in).
``make_unreachable`` makes ``data/web.db`` unwritable for the adapter (opened read-only):
a message that cannot be put in the history is not delivered."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from carapace.channels.base import ChannelAdapter
from carapace.config import Home
from carapace.db.connection import connect
from carapace.web.channel import Subscriber, WebChannel
from carapace.web.store import WebStore, web_db_path

from ..contract import SentItem

AG = "ag-contract"


class WebDriver:
    channel_type = "web"
    caps = frozenset({"files_in", "files_out", "edit", "react", "buttons", "typing",
                      "restart_redelivers"})  # fmt: skip
    max_text: int | None = None

    def __init__(self) -> None:
        self.channel: WebChannel | None = None
        self.home: Home | None = None
        self.sub: Subscriber | None = None
        self.typing: dict[str, int] = {}

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        self.home = Home(tmp_path / "home")
        self.channel = WebChannel(self.home)
        self.sub = self.channel.subscribe("ann")
        return self.channel

    async def stop(self) -> None:
        pass

    async def user_says(self, text: str, *, chat: str, user: str, thread: str | None = None,
                        mention: bool = False, file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        assert self.channel is not None
        files = (file,) if file is not None else ()
        with contextlib.suppress(RuntimeError):  # the page shows "not sent"; it is kept
            await self.channel.user_says(user, AG, text, files=files)

    def chat_id(self, chat: str) -> str:
        return f"ann/{AG}"

    def user_id(self, user: str) -> str:
        return f"web:{user}"

    def thread_id(self, chat: str, thread: str) -> str:
        raise AssertionError("the web chat has no threads")

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]:
        assert self.home is not None
        store = WebStore.open(self.home)
        try:
            out = []
            for m in store.history(self.chat_id(chat), limit=1000):
                if m.direction != "out":
                    continue
                c: dict[str, Any] = (
                    m.content if isinstance(m.content, dict) else {"text": str(m.content)}
                )
                if c.get("type") == "ask_question":
                    text = f"{c.get('title', '')}\n{c.get('question', '')}"
                else:
                    text = str(c.get("text", ""))
                buttons = [str(o.get("label")) for o in c.get("options") or []]
                out.append(SentItem(f"web-{m.id}", text, buttons, store.files_of(m.id),
                                    list(c.get("reactions") or []), bool(c.get("edited")), m))  # fmt: skip
            return out
        finally:
            store.close()

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None:
        assert self.channel is not None
        content = item.raw.content
        await self.channel.click(user, item.raw.platform_id, content["questionId"], button_index)

    async def make_unreachable(self, chat: str) -> None:
        assert self.channel is not None and self.home is not None
        if self.channel.store is not None:
            self.channel.store.close()
        self.channel.store = _ReadOnly(self.home)

    async def typing_shown(self, chat: str) -> int:
        assert self.sub is not None
        while not self.sub.queue.empty():
            ev = self.sub.queue.get_nowait()
            if ev.get("type") == "typing":
                self.typing[ev["chat"]] = self.typing.get(ev["chat"], 0) + 1
        return self.typing.get(self.chat_id(chat), 0)


class _ReadOnly(WebStore):
    """``data/web.db`` the adapter cannot write (as on a full or read-only disk)."""

    def __init__(self, home: Home) -> None:
        self.db = connect(web_db_path(home), "central", readonly=True)


DRIVER = WebDriver
