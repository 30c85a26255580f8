"""The channel adapter contract: the behaviour every adapter has, written once.

Each case runs against every driver found in ``tests/channels/drivers/`` (a module there
exposing ``DRIVER``, a zero-argument callable returning a ``ContractDriver``). A driver
stands its adapter up against that adapter's fake platform (a real server on loopback
where the platform has one) and plays the human on the platform side. Tests hand the
adapter a ``Recorder`` as its ``ChannelCallbacks`` and ``OutboundMessage``s, then look at
what the platform shows (``driver.sent``).

One case (``test_a_conversation_through_a_real_host``) hands the adapter to a real, hand-
driven ``Host`` instead: the message goes through the router into a session and the reply
row is delivered and recorded.

A case needing a capability the driver's ``caps`` lack is skipped, with the reason printed
(``-ra``). A driver may leave out only what its platform truly lacks:

=====================  ===================================================================
``threads``            a chat has threads/topics; an event in one carries ``thread_id`` and
                       a reply to that ``thread_id`` lands in it
``mention``            group chats where the bot is addressed (``isMention``) or not
``files_in``           a person can send a file; it arrives as a base64 ``attachments`` item
``files_out``          the adapter sends files
``edit`` / ``react``   the adapter edits its own messages / adds a reaction
``buttons``            cards show buttons; a click reaches ``on_action``
``typing``             the adapter shows "typing…"
``restart_redelivers`` an event whose routing failed (the host died before committing) is
                       offered again by the platform to the next adapter started
=====================  ===================================================================

Driving a case by hand: ``.venv/bin/python -m pytest tests/channels -k telegram -q``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from carapace.channels.base import (
    ButtonClick,
    ChannelAdapter,
    ChannelCallbacks,
    ClickAnswer,
    InboundEvent,
    OutboundFile,
    OutboundMessage,
)
from carapace.errors import DeliveryError
from carapace.host.preview import edit_into_preview
from carapace.jsonutil import loads_or
from carapace.permissions.access import clicker_id, event_sender

CAPS = frozenset(
    {"threads", "mention", "files_in", "files_out", "edit", "react", "buttons", "typing",
     "restart_redelivers"}
)  # fmt: skip
WAIT_S = 15.0  # generous: event-based waits never sleep this long unless something is wrong


@dataclass
class SentItem:
    """One message as the platform shows it to the people in the chat."""

    id: str  # the platform's message id (what ``deliver`` returned for the first piece)
    text: str  # the text a person reads (markup rendered away)
    buttons: list[str] = field(default_factory=list)  # button labels, in order
    files: list[tuple[str, bytes]] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)
    edited: bool = False
    raw: Any = None  # the driver's own record (for ``click``)


class ContractDriver(Protocol):
    channel_type: str
    caps: frozenset[str]
    max_text: int | None  # the platform's longest message, None = no limit

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        """A new adapter wired to the fake platform (not started: the test starts it).
        Called again after a stop, it returns a fresh adapter on the same platform."""
        ...

    async def stop(self) -> None:
        """Tear the fake platform down (the test has stopped the adapter)."""
        ...

    async def user_says(
        self, text: str, *, chat: str, user: str, thread: str | None = None,
        mention: bool = False, file: tuple[str, bytes] | None = None,
    ) -> None: ...  # fmt: skip

    def chat_id(self, chat: str) -> str:
        """The platform id carapace stores for ``chat`` (NanoClaw's format). Chat names the
        cases use: ``dm`` (a private chat with ``ann``), ``group`` (a group chat)."""
        ...

    def user_id(self, user: str) -> str:
        """The namespaced user id of ``user`` (NanoClaw's format, e.g. ``telegram:42``)."""
        ...

    def thread_id(self, chat: str, thread: str) -> str:
        """The ``thread_id`` carapace stores for the person's ``thread`` in ``chat``."""
        ...

    async def sent(self, chat: str, thread: str | None = None) -> list[SentItem]: ...

    async def click(self, item: SentItem, button_index: int, *, user: str) -> None: ...

    async def make_unreachable(self, chat: str) -> None:
        """From now on deliveries to ``chat`` fail (the bot was blocked, nobody reads)."""
        ...

    async def typing_shown(self, chat: str) -> int:
        """How many times "typing…" was sent to ``chat`` so far."""
        ...


# --- the recording callbacks -----------------------------------------------------------------


class Recorder:
    """``ChannelCallbacks`` that record; ``fail_inbound`` makes the next N routings raise
    (as a host that dies before committing would never answer)."""

    def __init__(self) -> None:
        self.events: list[InboundEvent] = []
        self.clicks: list[ButtonClick] = []
        self.statuses: list[tuple[str, str, str | None]] = []
        self.fail_inbound = 0
        self._changed = asyncio.Event()

    def callbacks(self) -> ChannelCallbacks:
        return ChannelCallbacks(on_inbound=self._inbound, on_action=self._action,
                                on_status=self._status)  # fmt: skip

    async def _inbound(self, event: InboundEvent) -> None:
        if self.fail_inbound > 0:
            self.fail_inbound -= 1
            self._changed.set()
            raise RuntimeError("the router died before committing")
        self.events.append(event)
        self._changed.set()

    async def _action(self, click: ButtonClick) -> ClickAnswer:
        self.clicks.append(click)
        self._changed.set()
        return ClickAnswer("approved", "Approved.", True)

    def _status(self, channel_type: str, state: str, detail: str | None) -> None:
        self.statuses.append((channel_type, state, detail))
        self._changed.set()

    async def wait_for(self, pred: Callable[[], bool], what: str) -> None:
        async def _wait() -> None:
            while not pred():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(_wait(), WAIT_S)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}")

    async def event(self, n: int = 1) -> InboundEvent:
        await self.wait_for(lambda: len(self.events) >= n, f"inbound event #{n}")
        return self.events[n - 1]


async def until(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll the fake platform's view (it lives outside the adapter) until ``probe``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --- driver discovery and the harness ---------------------------------------------------------


def discover() -> list[Callable[[], ContractDriver]]:
    from . import drivers

    found = []
    for info in sorted(pkgutil.iter_modules(drivers.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{drivers.__name__}.{info.name}")
        if hasattr(module, "DRIVER"):
            found.append(module.DRIVER)
    return found


_FACTORIES = discover()


@dataclass
class Harness:
    driver: ContractDriver
    tmp_path: Path
    rec: Recorder = field(default_factory=Recorder)
    adapter: ChannelAdapter | None = None

    def need(self, *caps: str) -> None:
        missing = [c for c in caps if c not in self.driver.caps]
        if missing:
            pytest.skip(f"{self.driver.channel_type}: the platform has no {', '.join(missing)}")

    async def up(self) -> ChannelAdapter:
        self.adapter = await self.driver.start(self.tmp_path)
        await self.adapter.start(self.rec.callbacks())
        return self.adapter

    async def restart(self) -> ChannelAdapter:
        assert self.adapter is not None
        await self.adapter.stop()
        return await self.up()

    @property
    def a(self) -> ChannelAdapter:
        assert self.adapter is not None
        return self.adapter

    async def say(self, text: str, n: int, **kw: Any) -> InboundEvent:
        await self.driver.user_says(text, **kw)
        return await self.rec.event(n)

    async def deliver(self, chat: str, content: Any, *, thread: str | None = None,
                      files: tuple[OutboundFile, ...] = (), kind: str = "chat",
                      msg_id: str = "msg-1") -> str | None:  # fmt: skip
        return await self.a.deliver(self.driver.chat_id(chat), thread,
                                    OutboundMessage(kind, content, files, msg_id))  # fmt: skip

    async def shown(self, chat: str, n: int, thread: str | None = None) -> list[SentItem]:
        items: list[SentItem] = []

        async def probe() -> bool:
            items[:] = await self.driver.sent(chat, thread)
            return len(items) >= n

        await until(probe, f"{n} message(s) shown in {chat}")
        return items


def run_case(factory: Callable[[], ContractDriver], tmp_path: Path,
             case: Callable[[Harness], Coroutine[Any, Any, None]]) -> None:  # fmt: skip
    async def main() -> None:
        h = Harness(factory(), tmp_path)
        try:
            await h.up()
            await case(h)
        finally:
            if h.adapter is not None:
                await h.adapter.stop()
            await h.driver.stop()

    asyncio.run(main())


@pytest.fixture(
    params=_FACTORIES,
    ids=lambda f: getattr(f, "name", None) or getattr(f, "channel_type", f.__name__),
)
def driver_factory(request: pytest.FixtureRequest) -> Callable[[], ContractDriver]:
    factory: Callable[[], ContractDriver] = request.param
    return factory


def _content(event: InboundEvent) -> dict[str, Any]:
    doc = loads_or(event.message.content, None)
    assert isinstance(doc, dict), f"content is not a JSON object: {event.message.content!r}"
    return doc


CARD = {
    "type": "ask_question", "questionId": "appr-contract-1", "title": "🔐 May I?",
    "question": "Install <curl> & jq?",
    "options": [{"label": "Approve", "selectedLabel": "✅ Approved", "value": "approve"},
                {"label": "Reject", "selectedLabel": "❌ Rejected", "value": "reject"}],
    "text": "🔐 May I?\nInstall <curl> & jq?\nOptions: Approve, Reject\n"
            "Reply `ab12 approve` or `ab12 reject`",
    "replyCode": "ab12",
}  # fmt: skip


# --- the cases ---------------------------------------------------------------------------------


def test_inbound_text(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        ev = await h.say("hello there", 1, chat="dm", user="ann")
        assert ev.channel_type == h.driver.channel_type
        assert ev.platform_id == h.driver.chat_id("dm")
        assert ev.message.id
        assert _content(ev)["text"] == "hello there"
        assert event_sender(ev.channel_type, ev.message.content)[0] == h.driver.user_id("ann")
        assert ev.message.is_group in (None, False)

    run_case(driver_factory, tmp_path, case)


def test_inbound_ids_are_distinct(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        a = await h.say("one", 1, chat="dm", user="ann")
        b = await h.say("two", 2, chat="dm", user="ann")
        assert a.message.id != b.message.id
        assert [_content(e)["text"] for e in h.rec.events] == ["one", "two"]

    run_case(driver_factory, tmp_path, case)


def test_inbound_mention(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("mention")
        plain = await h.say("just chatting", 1, chat="group", user="ann")
        addressed = await h.say("what time is it?", 2, chat="group", user="bob", mention=True)
        assert plain.platform_id == addressed.platform_id == h.driver.chat_id("group")
        assert plain.message.is_group is True and addressed.message.is_group is True
        assert not plain.message.is_mention
        assert addressed.message.is_mention is True
        assert "what time is it?" in _content(addressed)["text"]
        assert event_sender(addressed.channel_type, addressed.message.content)[0] == \
            h.driver.user_id("bob")  # fmt: skip

    run_case(driver_factory, tmp_path, case)


def test_inbound_thread_and_reply_in_it(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("threads")
        assert h.a.supports_threads
        ev = await h.say("in a topic", 1, chat="group", user="ann", thread="t1", mention=True)
        assert ev.thread_id == h.driver.thread_id("group", "t1")
        main = await h.say("outside", 2, chat="group", user="ann", mention=True)
        assert main.thread_id != ev.thread_id
        await h.deliver("group", {"text": "answer in the topic"}, thread=ev.thread_id)
        items = await h.shown("group", 1, thread="t1")
        assert "answer in the topic" in items[-1].text

    run_case(driver_factory, tmp_path, case)


def test_inbound_file(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("files_in")
        data = bytes(range(256)) * 4
        ev = await h.say("see attached", 1, chat="dm", user="ann", file=("notes.bin", data))
        atts = _content(ev).get("attachments")
        assert isinstance(atts, list) and len(atts) == 1
        assert base64.b64decode(atts[0]["data"]) == data
        assert atts[0].get("name") == "notes.bin"

    run_case(driver_factory, tmp_path, case)


def test_outbound_text(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        await h.say("hi", 1, chat="dm", user="ann")  # a chat the bot may write to
        pm = await h.deliver("dm", {"text": "Hello, <ann> & co — *welcome*"})
        items = await h.shown("dm", 1)
        assert "Hello, <ann> & co" in items[-1].text  # escaped for the platform, shown as is
        assert "welcome" in items[-1].text
        assert pm is not None and items[-1].id == pm

    run_case(driver_factory, tmp_path, case)


def test_outbound_long_text_loses_nothing(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        await h.say("hi", 1, chat="dm", user="ann")
        paras = [f"Paragraph {i}. " + " ".join(f"word{i}x{j}." for j in range(120))
                 for i in range(12)]  # fmt: skip
        text = "\n\n".join(paras)
        await h.deliver("dm", {"text": text})
        limit = h.driver.max_text
        expected = 1 if limit is None else -(-len(text) // limit)
        items = await h.shown("dm", expected)
        if limit is not None:
            assert all(len(i.text) <= limit for i in items)
            assert all(i.text.rstrip().endswith(".") for i in items)  # cut at a boundary
        assert " ".join(i.text for i in items).split() == text.split()

    run_case(driver_factory, tmp_path, case)


def test_outbound_edit(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("edit")
        await h.say("hi", 1, chat="dm", user="ann")
        pm = await h.deliver("dm", {"text": "first version"})
        assert pm is not None
        await h.a.edit(h.driver.chat_id("dm"), None, pm, "second version")  # type: ignore[attr-defined]
        items = await h.shown("dm", 1)
        assert items[-1].text == "second version" and items[-1].edited

    run_case(driver_factory, tmp_path, case)


def test_streamed_reply_preview_becomes_the_reply(driver_factory: Any, tmp_path: Path) -> None:
    """A reply shown as it is written (host/preview.py): a preview message edited a few
    times, then the final text edited into it by delivery's ``edit_into_preview``; a text
    longer than the adapter's ``edit_chars`` fills the preview and the rest follows, every
    word shown once and the preview never cut."""

    async def case(h: Harness) -> None:
        h.need("edit")
        if h.driver.channel_type != "fake":  # the tests' fake streams only when told to
            assert getattr(h.a, "streams_replies", False), "an adapter that edits streams"
        await h.say("hi", 1, chat="dm", user="ann")
        chat = h.driver.chat_id("dm")
        pm = await h.deliver("dm", {"text": "Once upon"})
        assert pm is not None
        for partial in ("Once upon a time", "Once upon a time there was"):
            await h.a.edit(chat, None, pm, partial)  # type: ignore[attr-defined]
        limit = int(getattr(h.a, "edit_chars", 2000))
        paras: list[str] = []
        while len("\n\n".join(paras)) < min(limit, 20_000) + 300:
            paras.append(
                f"Paragraph {len(paras)}. " + " ".join(f"w{len(paras)}x{j}." for j in range(40))
            )
        text = "\n\n".join(paras)
        msg = OutboundMessage("chat", {"text": text}, message_out_id="msg-r")
        assert await edit_into_preview(h.a, chat, None, pm, msg) == pm
        expected = 2 if len(text) > limit else 1
        items = await h.shown("dm", expected)
        assert len(items) == expected
        assert items[0].id == pm and items[0].edited
        assert " ".join(i.text for i in items).split() == text.split()

    run_case(driver_factory, tmp_path, case)


def test_outbound_reaction(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("react")
        await h.say("hi", 1, chat="dm", user="ann")
        pm = await h.deliver("dm", {"text": "react to me"})
        assert pm is not None
        await h.a.react(h.driver.chat_id("dm"), None, pm, "👍")  # type: ignore[attr-defined]
        items = await h.shown("dm", 1)
        assert "👍" in items[-1].reactions

    run_case(driver_factory, tmp_path, case)


def test_outbound_file(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("files_out")
        await h.say("hi", 1, chat="dm", user="ann")
        data = b"report body\n" * 100
        await h.deliver("dm", {"text": "the report", "files": ["report.txt"]},
                        files=(OutboundFile("report.txt", data),))  # fmt: skip
        items = await h.shown("dm", 1)
        files = [f for i in items for f in i.files]
        assert ("report.txt", data) in files
        assert any("the report" in i.text for i in items)

    run_case(driver_factory, tmp_path, case)


def test_outbound_card(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        await h.say("hi", 1, chat="dm", user="ann")
        await h.deliver("dm", CARD, kind="chat-sdk")
        items = await h.shown("dm", 1)
        assert "May I?" in items[-1].text and "Install <curl> & jq?" in items[-1].text
        if "buttons" in h.driver.caps:
            assert items[-1].buttons == ["Approve", "Reject"]
        else:  # no buttons: the options and the reply code are in the text
            assert "Approve" in items[-1].text and "ab12" in items[-1].text

    run_case(driver_factory, tmp_path, case)


def test_button_click_reaches_approvals(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("buttons")
        await h.say("hi", 1, chat="dm", user="ann")
        await h.deliver("dm", CARD, kind="chat-sdk")
        items = await h.shown("dm", 1)
        await h.driver.click(items[-1], 1, user="ann")
        await h.rec.wait_for(lambda: bool(h.rec.clicks), "the click")
        click = h.rec.clicks[0]
        assert click.question_id == "appr-contract-1"
        assert click.value in ("1", "reject")
        assert click.channel_type == h.driver.channel_type
        assert clicker_id(click.user_id, click.channel_type) == h.driver.user_id("ann")
        assert click.platform_id == h.driver.chat_id("dm")

    run_case(driver_factory, tmp_path, case)


def test_typing(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("typing")
        await h.say("hi", 1, chat="dm", user="ann")
        before = await h.driver.typing_shown("dm")
        await h.a.set_typing(h.driver.chat_id("dm"), None)  # type: ignore[attr-defined]

        async def probe() -> bool:
            return await h.driver.typing_shown("dm") > before

        await until(probe, "typing shown")

    run_case(driver_factory, tmp_path, case)


def test_delivery_failure_is_an_error(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        await h.say("hi", 1, chat="dm", user="ann")
        await h.driver.make_unreachable("dm")
        with pytest.raises(DeliveryError):
            await h.deliver("dm", {"text": "nobody will read this"})

    run_case(driver_factory, tmp_path, case)


def test_restart_keeps_working(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        await h.say("before", 1, chat="dm", user="ann")
        await h.restart()
        ev = await h.say("after", 2, chat="dm", user="ann")
        assert _content(ev)["text"] == "after"
        await h.deliver("dm", {"text": "still here"})
        items = await h.shown("dm", 1)
        assert "still here" in items[-1].text

    run_case(driver_factory, tmp_path, case)


def test_unrouted_event_is_offered_again(driver_factory: Any, tmp_path: Path) -> None:
    async def case(h: Harness) -> None:
        h.need("restart_redelivers")
        h.rec.fail_inbound = 1  # the host dies between receiving and committing
        await h.driver.user_says("do not lose me", chat="dm", user="ann")
        await h.rec.wait_for(lambda: h.rec.fail_inbound == 0, "the failed routing")
        await h.restart()
        ev = await h.rec.event(1)
        assert _content(ev)["text"] == "do not lose me"
        await h.driver.user_says("next", chat="dm", user="ann")
        await h.rec.wait_for(lambda: any(_content(e)["text"] == "next" for e in h.rec.events),
                             "the next message")  # fmt: skip
        unique = {e.message.id: _content(e)["text"] for e in h.rec.events}  # the router dedups
        assert list(unique.values()) == ["do not lose me", "next"]

    run_case(driver_factory, tmp_path, case)


def test_a_conversation_through_a_real_host(driver_factory: Any, tmp_path: Path) -> None:
    """The adapter owned by a real ``Host`` (hand-driven, no runner): the person's message
    becomes a session's inbound row through the router, and the agent's reply (an outbound
    row, as a runner writes it) reaches the chat, recorded as delivered."""
    from carapace.config import Home, Settings
    from carapace.db import groups, messaging
    from carapace.db.session import insert_message_out, open_inbound, open_outbound
    from carapace.db.sessions import list_sessions
    from carapace.host.host import Host, HostOptions
    from carapace.host.pool import FakeBackend
    from carapace.jsonutil import dumps
    from carapace.timefmt import sqlite_ts

    async def case(h: Harness) -> None:
        await h.a.stop()  # the host takes its own adapter on the same platform
        h.adapter = None
        adapter = await h.driver.start(h.tmp_path)
        host = Host(Home(h.tmp_path / "home"), settings=Settings(runner_idle_exit_s=0),
                    channels=[adapter], backend=FakeBackend(),
                    options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
        await host.start(background=False)
        try:
            ag = groups.create_agent_group(host.db, "ag", "ag").id
            mg = messaging.create_messaging_group(
                host.db, h.driver.channel_type, h.driver.chat_id("dm"), name="dm",
                unknown_sender_policy="public",
            ).id  # fmt: skip
            messaging.create_wiring(host.db, mg, ag, engage_mode="pattern", engage_pattern=".")
            await h.driver.user_says("hello host", chat="dm", user="ann")

            async def routed() -> bool:  # the row, and the folder made after it
                return any(host.sessions.ready(s) for s in list_sessions(host.db))

            await until(routed, "a session")
            [session] = list_sessions(host.db)
            paths = host.sessions.paths(session)

            async def stored() -> bool:
                conn = open_inbound(paths)
                try:
                    return bool(conn.execute("SELECT 1 FROM messages_in WHERE content LIKE "
                                             "'%hello host%'").fetchall())  # fmt: skip
                finally:
                    conn.close()

            await until(stored, "the inbound row")
            conn = open_outbound(paths)
            try:
                insert_message_out(conn, {
                    "id": "msg-reply-1", "kind": "chat", "timestamp": sqlite_ts(host.now()),
                    "channel_type": h.driver.channel_type, "platform_id": h.driver.chat_id("dm"),
                    "content": dumps({"text": "hello person"}),
                })  # fmt: skip
            finally:
                conn.close()
            assert await host.deliver_once(session.id) == 1
            items = await h.shown("dm", 1)
            assert "hello person" in items[-1].text
            conn = open_inbound(paths)
            try:
                [(status,)] = conn.execute("SELECT status FROM delivered").fetchall()
            finally:
                conn.close()
            assert status == "delivered"
        finally:
            await host.stop()
            host.close()

    run_case(driver_factory, tmp_path, case)
