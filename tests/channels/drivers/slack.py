"""Contract driver for the Slack adapter: slack-bolt in Socket Mode against
``carapace.testing.fake_slack`` on loopback. Slack has no "typing…" a bot can show
outside assistant threads, so ``typing`` is left out."""

from __future__ import annotations

import html
import re
from pathlib import Path

from carapace.channels.base import ChannelAdapter
from carapace.channels.slack_adapter import _EMOJI, SlackChannel
from carapace.testing.fake_slack import FakeSlack, Message

from ..contract import SentItem

USERS = {"ann": "U0ANN", "bob": "U0BOB"}
GROUP = "C0GROUP"
_NAMES = {v: k for k, v in _EMOJI.items()}
_LINK = re.compile(r"<([^|>]+)\|([^>]+)>")
_MARKS = [re.compile(r"\*(\S[^*\n]*?)\*"), re.compile(r"(?<!\w)_(\S[^_\n]*?)_(?!\w)"),
          re.compile(r"~(\S[^~\n]*?)~")]  # fmt: skip


def rendered(m: Message) -> str:
    """What a person reads: blocks' sections (else the text), mrkdwn rendered away."""
    sections = [str(b["text"]["text"]) for b in m.blocks
                if b.get("type") == "section" and isinstance(b.get("text"), dict)]  # fmt: skip
    text = "\n".join(sections) if sections else m.text
    text = _LINK.sub(r"\2", text)
    for mark in _MARKS:
        text = mark.sub(r"\1", text)
    return html.unescape(text)


class SlackDriver:
    channel_type = "slack"
    caps = frozenset({"threads", "mention", "files_in", "files_out", "edit", "react",
                      "buttons", "restart_redelivers"})  # fmt: skip
    max_text: int | None = 4000

    def __init__(self) -> None:
        self.slack: FakeSlack | None = None
        self.threads: dict[tuple[str, str], str] = {}

    async def _world(self) -> FakeSlack:
        """The fake Slack with the cases' people and group channel (made once)."""
        if self.slack is None:
            self.slack = FakeSlack()
            await self.slack.start()
            for name, uid in USERS.items():
                self.slack.add_user(uid, name.title())
            self.slack.add_channel(GROUP, "channel")
        return self.slack

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        s = await self._world()
        return SlackChannel(s.bot_token, s.app_token, base_url=s.api_url, ping_interval=0.5)

    async def stop(self) -> None:
        if self.slack is not None:
            await self.slack.stop()

    def _channel(self, chat: str) -> str:
        assert self.slack is not None
        return self.slack.dm_of(USERS["ann"]) if chat == "dm" else GROUP

    def _root(self, chat: str, thread: str) -> str:
        assert self.slack is not None
        key = (chat, thread)
        if key not in self.threads:
            self.threads[key] = self.slack.history(self._channel(chat), USERS["bob"], thread)
        return self.threads[key]

    async def user_says(self, text: str, *, chat: str, user: str, thread: str | None = None,
                        mention: bool = False, file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        assert self.slack is not None
        files = [self.slack.share_file(file[0], file[1])] if file else None
        if mention:
            text = f"<@{self.slack.bot_user_id}> {text}"
        await self.slack.user_says(self._channel(chat), USERS[user], text, files=files,
                                   thread_ts=self._root(chat, thread) if thread else None)  # fmt: skip

    def chat_id(self, chat: str) -> str:
        return f"slack:{self._channel(chat)}"

    def user_id(self, user: str) -> str:
        return f"slack:{USERS[user]}"

    def thread_id(self, chat: str, thread: str) -> str:
        return f"slack:{self._channel(chat)}:{self._root(chat, thread)}"

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]:
        assert self.slack is not None
        channel = self._channel(chat)
        root = self._root(chat, thread) if thread else None
        out = []
        for m in self.slack.bot_messages(channel):
            if m.thread_ts != root:
                continue
            files = [(str(f["name"]), bytes(self.slack.files[f["id"]]["data"])) for f in m.files]
            reactions = [_NAMES.get(r[2], r[2]) for r in self.slack.reactions
                         if r[0] == channel and r[1] == m.ts]  # fmt: skip
            buttons = [str(b["text"]["text"]) for b in m.buttons()]
            out.append(SentItem(m.ts, rendered(m), buttons, files, reactions, m.edited, raw=m))
        return out

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None:
        assert self.slack is not None
        await self.slack.click(item.raw.channel, item.id, button_index, USERS[user])

    async def make_unreachable(self, chat: str) -> None:
        assert self.slack is not None
        self.slack.archive(self._channel(chat))

    async def typing_shown(self, chat: str) -> int:
        return 0


DRIVER = SlackDriver
