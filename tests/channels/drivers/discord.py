"""Contract driver for the Discord adapter: discord.py against the fake Discord
(``carapace.testing.fake_discord``, gateway and REST on loopback).

Every capability: Discord itself does not redeliver after a restart (a new gateway session
gets no backlog), but the adapter reads each channel's history after the last message it
routed (``carapace.channels.discord_catchup``), so an event the host never committed is
offered again. (A dropped connection resumes and gets what it missed:
``test_discord_adapter``.)"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from carapace.channels.base import ChannelAdapter
from carapace.channels.discord_adapter import DiscordChannel
from carapace.testing.fake_discord import Channel, FakeDiscord

from ..contract import WAIT_S, SentItem


def _readable(text: str) -> str:
    """What a person reads: Discord's markup rendered away."""
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text, flags=re.S)
    return re.sub(r"\\([\\*_|`~>#-])", r"\1", text)


class DiscordDriver:
    channel_type = "discord"
    caps = frozenset(
        {
            "threads",
            "mention",
            "files_in",
            "files_out",
            "edit",
            "react",
            "buttons",
            "typing",
            "restart_redelivers",
        }
    )
    max_text: int | None = 2000

    def __init__(self) -> None:
        self.fake: FakeDiscord | None = None
        self.adapter: DiscordChannel | None = None

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        if self.fake is None:
            self.fake = await FakeDiscord().start()
        self.adapter = DiscordChannel(self.fake.token, base_url=self.fake.base_url,
                                      guild_ready_timeout=0.05,
                                      state_path=tmp_path / "discord-cursor.json")  # fmt: skip
        return self.adapter

    async def stop(self) -> None:
        if self.fake is not None:
            await self.fake.stop()

    @property
    def f(self) -> FakeDiscord:
        assert self.fake is not None
        return self.fake

    def _chat(self, chat: str) -> Channel:
        if chat == "dm":
            return self.f.dm(self.f.person("ann"))
        return self.f.text_channel("home", chat)

    def _channel(self, chat: str, thread: str | None) -> Channel:
        c = self._chat(chat)
        return self.f.thread(c, thread) if thread else c

    async def user_says(self, text: str, *, chat: str, user: str, thread: str | None = None,
                        mention: bool = False, file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        assert self.adapter is not None
        await asyncio.wait_for(self.adapter.ready.wait(), WAIT_S)  # the bot is connected
        await self.f.user_says(self._channel(chat, thread), self.f.person(user), text,
                               mention=mention, file=file)  # fmt: skip

    def chat_id(self, chat: str) -> str:
        c = self._chat(chat)
        return f"discord:{c.guild_id or '@me'}:{c.id}"

    def user_id(self, user: str) -> str:
        return f"discord:{self.f.person(user).id}"

    def thread_id(self, chat: str, thread: str) -> str:
        c = self._chat(chat)
        return f"discord:{c.guild_id}:{c.id}:{self.f.thread(c, thread).id}"

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]:
        c = self._channel(chat, thread)
        out = []
        for m in self.f.bot_messages(c):
            buttons = [str(b.get("label")) for row in m["components"] for b in row["components"]]
            files = [(a["filename"], self.f._files[a["id"]]) for a in m["attachments"]]
            reactions = [e for (ch, mid, e) in self.f.reactions if ch == c.id and mid == m["id"]]
            out.append(SentItem(m["id"], _readable(m["content"]), buttons, files, reactions,
                                m["edited_timestamp"] is not None, raw=m))  # fmt: skip
        return out

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None:
        await self.f.click(item.raw, button_index, self.f.person(user))

    async def make_unreachable(self, chat: str) -> None:
        self.f.make_unreachable(self._chat(chat))

    async def typing_shown(self, chat: str) -> int:
        return self.f.typing.count(self._chat(chat).id)


DRIVER = DiscordDriver
