"""Contract driver for the Telegram adapter: the real python-telegram-bot against the fake
Bot API server (``carapace.testing.fake_telegram``) on loopback. People: ann (1001), bob
(1002); chats: ``dm`` (ann's private chat), ``group`` (a forum supergroup; thread ``tN`` is
topic N+10)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from carapace.channels.base import ChannelAdapter
from carapace.channels.telegram import TelegramChannel, TelegramConfig
from carapace.testing.fake_telegram import FakeTelegram

from ..contract import SentItem

USERS = {"ann": 1001, "bob": 1002}
GROUP = -1001234500


class TelegramDriver:
    channel_type = "telegram"
    caps = frozenset({"threads", "mention", "files_in", "files_out", "edit", "react", "buttons",
                      "typing", "restart_redelivers"})  # fmt: skip
    max_text: int | None = 4096

    def __init__(self) -> None:
        self.tg: FakeTelegram | None = None

    @property
    def fake(self) -> FakeTelegram:
        assert self.tg is not None
        return self.tg

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        if self.tg is None:
            self.tg = FakeTelegram()
        return TelegramChannel(TelegramConfig(self.fake.token, self.fake.root_url,
                                              poll_timeout_s=1, backoff_s=0.05))  # fmt: skip

    async def stop(self) -> None:
        if self.tg is not None:
            await asyncio.to_thread(self.tg.close)
            self.tg = None

    def _user(self, user: str) -> dict[str, Any]:
        return self.fake.user(USERS[user], user.title(), user)

    def _chat(self, chat: str) -> dict[str, Any]:
        if chat == "dm":
            return self.fake.private_chat(USERS["ann"], "Ann")
        return self.fake.group_chat(GROUP, "Team", forum=True)

    def _cid(self, chat: str) -> int:
        return USERS["ann"] if chat == "dm" else GROUP

    @staticmethod
    def _topic(thread: str) -> int:
        return int(thread.removeprefix("t")) + 10

    async def user_says(self, text: str, *, chat: str, user: str, thread: str | None = None,
                        mention: bool = False, file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        entities = None
        if mention:
            handle = f"@{self.fake.username}"
            text = f"{handle} {text}"
            entities = [{"type": "mention", "offset": 0, "length": len(handle)}]
        self.fake.user_message(self._chat(chat), self._user(user), text,
                               thread=self._topic(thread) if thread else None,
                               entities=entities, document=file)  # fmt: skip

    def chat_id(self, chat: str) -> str:
        return f"telegram:{self._cid(chat)}"

    def user_id(self, user: str) -> str:
        return f"telegram:{USERS[user]}"

    def thread_id(self, chat: str, thread: str) -> str:
        return str(self._topic(thread))

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]:
        cid = self._cid(chat)
        out = []
        for m in self.fake.bot_messages(cid, self._topic(thread) if thread else None):
            out.append(SentItem(
                f"{cid}:{m.message_id}", m.text, [b["text"] for row in m.buttons for b in row],
                [m.document] if m.document else [], list(m.reactions), m.edits > 0, raw=m,
            ))  # fmt: skip
        return out

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None:
        self.fake.press_button(item.raw.chat_id, item.raw.message_id, button_index,
                               self._user(user))  # fmt: skip

    async def make_unreachable(self, chat: str) -> None:
        self.fake.block(self._cid(chat))

    async def typing_shown(self, chat: str) -> int:
        return sum(1 for a in self.fake.actions if a[0] == self._cid(chat) and a[1] == "typing")


DRIVER = TelegramDriver
