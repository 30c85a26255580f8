"""Contract driver for the recording ``FakeChannel`` (``carapace.channels.fake``): the driver
plays the platform by calling the adapter's callbacks directly. It has every capability
except redelivery (there is no platform to offer an event again)."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

from carapace.channels.base import ButtonClick, ChannelAdapter
from carapace.channels.fake import FakeChannel, make_event

from ..contract import SentItem


class FakeDriver:
    channel_type = "fake"
    caps = frozenset(
        {"threads", "mention", "files_in", "files_out", "edit", "react", "buttons", "typing"}
    )
    max_text: int | None = None

    def __init__(self) -> None:
        self.channel: FakeChannel | None = None
        self.ids = itertools.count(1)

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        old = self.channel
        self.channel = FakeChannel(supports_threads=True)
        if old is not None:  # the "platform" (what was shown) outlives one adapter
            self.channel.deliveries, self.channel.edits = old.deliveries, old.edits
            self.channel.reactions, self.channel.typing = old.reactions, old.typing
            self.channel._ids = old._ids
        return self.channel

    async def stop(self) -> None:
        pass

    async def user_says(self, text: str, *, chat: str, user: str, thread: str | None = None,
                        mention: bool = False, file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        assert self.channel is not None and self.channel.callbacks is not None
        extra = {}
        if file is not None:
            extra["attachments"] = [{"name": file[0], "size": len(file[1]),
                                     "data": base64.b64encode(file[1]).decode()}]  # fmt: skip
        event = make_event(
            text, platform_id=self.chat_id(chat), sender=user, sender_id=self.user_id(user),
            thread_id=self.thread_id(chat, thread) if thread else None,
            is_mention=bool(mention or chat == "dm"), is_group=chat != "dm",
            id=f"fake-{next(self.ids)}", extra=extra,
        )  # fmt: skip
        await self.channel.callbacks.on_inbound(event)

    def chat_id(self, chat: str) -> str:
        return f"fake-{chat}"

    def user_id(self, user: str) -> str:
        return f"fake:{user}"

    def thread_id(self, chat: str, thread: str) -> str:
        return f"{chat}/{thread}"

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]:
        assert self.channel is not None
        pid = self.chat_id(chat)
        tid = self.thread_id(chat, thread) if thread else None
        out = []
        for n, d in enumerate(self.channel.deliveries, 1):
            if d.platform_id != pid or d.thread_id != tid:
                continue
            pm = f"fake-pm-{n}"
            c = d.content
            text = str(c.get("text") or "") if isinstance(c, dict) else str(c)
            if isinstance(c, dict) and c.get("type") == "ask_question":
                text = f"{c.get('title')}\n{c.get('question')}"
            edits = [e[3] for e in self.channel.edits if e[2] == pm]
            buttons = (
                [str(o.get("label")) for o in c.get("options", [])] if isinstance(c, dict) else []
            )
            out.append(SentItem(
                pm, edits[-1] if edits else text, buttons, list(d.files),
                [r[3] for r in self.channel.reactions if r[2] == pm], bool(edits), raw=c,
            ))  # fmt: skip
        return out

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None:
        assert self.channel is not None and self.channel.callbacks is not None
        await self.channel.callbacks.on_action(ButtonClick(
            "fake", str(item.raw["questionId"]), str(button_index), user, self.chat_id("dm"),
        ))  # fmt: skip

    async def make_unreachable(self, chat: str) -> None:
        assert self.channel is not None
        self.channel.fail_always = True

    async def typing_shown(self, chat: str) -> int:
        assert self.channel is not None
        return sum(1 for t in self.channel.typing if t[0] == self.chat_id(chat))


DRIVER = FakeDriver
