"""``carapace chat``'s side of the CLI socket: one conversation that survives host restarts.

When the host goes away (a restart, a crash) the chat says so, reconnects (to the home's
host when one comes back within ``RECONNECT_GRACE_S``, else to an embedded host of its own)
and carries on:

* nothing the user typed is lost: a message not yet acknowledged is sent again with the
  same event id (the host recognises a redelivered event and does not store it twice), and
  lines typed while disconnected are sent once connected;
* no reply is printed twice: replies are shown once per outbound message id;
* a reply written while no reader was connected stays undelivered in the host until a
  client connects (``channels/cli.py``), so it arrives after the reconnect.

Bad lines (not UTF-8, empty, over ``MAX_MESSAGE_BYTES``) are refused with one line and
counted; the chat goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from carapace.config import Home
from carapace.errors import CarapaceError
from carapace.host.admin_server import AdminDispatch
from carapace.host.client import CliClient, check_message, connect_or_embed, stop_embedded
from carapace.host.host import Host
from carapace.timefmt import new_id

logger = logging.getLogger(__name__)

RECONNECT_GRACE_S = 10.0  # wait this long for the home's own host before embedding one
RETRY_MAX_S = 1.0

Echo = Callable[[str], None]


def owns(eid: str, msg: dict[str, Any]) -> bool:
    """The message answers ``eid``: its ``in_reply_to`` or one of its ``answers`` (a reply to
    a batch names every message in it)."""
    answers = msg.get("answers")
    ids = [msg.get("in_reply_to"), *(answers if isinstance(answers, list) else [])]
    return any(isinstance(i, str) and (i == eid or i.startswith(eid + ":")) for i in ids)


def held_note(ids: list[Any]) -> str:
    return (f"[held for approval ({', '.join(str(i) for i in ids)}): an admin must approve "
            "this sender; the reply comes to the next client of this chat]")  # fmt: skip


async def reconnect(
    home: Home,
    mode: str,
    old_host: Host | None,
    *,
    grace: float,
    admin: AdminDispatch | None = None,
    deadline: float | None = None,
) -> tuple[CliClient, Host | None]:
    """A new connection after the host went away: to the home's own host when it is back
    within ``grace`` seconds (a restart), else to an embedded host started here (a host we
    embedded ourselves and that died is stopped first). Retries with backoff; past
    ``deadline`` (``time.monotonic()``) a ``TimeoutError``."""
    if old_host is not None:  # our own host died under us: start a new one
        with contextlib.suppress(Exception):
            await stop_embedded(old_host)
    embed_after = time.monotonic() + grace
    delay = 0.05
    while True:
        try:
            if time.monotonic() < embed_after:
                return await CliClient.connect(home, mode), None
            return await connect_or_embed(home, mode, admin=admin)
        except (OSError, CarapaceError) as exc:
            logger.debug("reconnect: %s", exc)
        if deadline is not None and time.monotonic() + delay > deadline:
            raise TimeoutError("the host did not come back")
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


class ChatSession:
    def __init__(
        self, home: Home, user: str, echo: Echo, *, reconnect_grace: float = RECONNECT_GRACE_S,
        admin: AdminDispatch | None = None,
    ) -> None:  # fmt: skip
        self.home = home
        self.admin = admin  # the embedded host's admin dispatcher (commands floor)
        self.reconnect_grace = reconnect_grace
        self.user = user
        self.echo = echo
        self.client: CliClient | None = None
        self.host: Host | None = None
        self.unacked: dict[str, str] = {}  # event id -> text: sent (or due), no ack yet
        self.waiting: set[str] = set()  # sent, not yet answered (nor refused, nor held)
        self.routed: list[str] = []  # acked as routed, in order
        self.shown: set[str] = set()  # outbound ids printed: none twice
        self.refused = 0  # lines not sent (bad input)
        self.reconnects = 0
        self.changed = asyncio.Event()
        self.connected = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time (say vs. resend after reconnect)
        self._closing = False
        self._sent_on_this_connection: set[str] = set()

    async def open(self) -> None:
        self.client, self.host = await connect_or_embed(self.home, "chat", admin=self.admin)
        self.connected.set()

    @property
    def where(self) -> str:
        return "embedded host" if self.host else "running host"

    # -- sending ----------------------------------------------------------------------------
    def line(self, raw: bytes | str) -> None:
        """One input line: checked, then sent now or when connected."""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            text = text.rstrip("\r\n") if text.strip() else text
            if not text.strip():
                return  # blank lines are skipped, as always
            check_message(text)
        except UnicodeDecodeError:
            self._refuse("the line is not valid UTF-8")
            return
        except CarapaceError as exc:
            self._refuse(str(exc))
            return
        eid = new_id("cli")
        self.unacked[eid] = text
        self.waiting.add(eid)

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.echo(f"[not sent: {why}]")

    async def flush(self) -> None:
        """Send every message without an ack (again after a reconnect: same event ids)."""
        async with self._lock:
            if not self.connected.is_set() or self.client is None:
                return
            for eid, text in list(self.unacked.items()):
                if eid in self._sent_on_this_connection:
                    continue
                try:
                    await self.client.say(text, self.user, eid)
                except (OSError, ConnectionError):
                    return  # the reader notices the loss and reconnects
                self._sent_on_this_connection.add(eid)

    # -- receiving --------------------------------------------------------------------------
    def _answered(self, msg: dict[str, Any]) -> None:
        # a turn answers a batch: the reply names the batch's first message, and the
        # messages routed after it (before this reply) were in that batch too
        first = next((i for i, e in enumerate(self.routed) if owns(e, msg)), None)
        if first is not None:
            self.waiting.difference_update(self.routed[first:])

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "message":
            out_id = msg.get("id")
            if isinstance(out_id, str) and out_id in self.shown:
                self._answered(msg)
                return
            if isinstance(out_id, str):
                self.shown.add(out_id)
            self.echo(f"agent> {msg.get('text') or json.dumps(msg.get('content'))}")
            self._answered(msg)
        elif kind == "ack":
            eid = str(msg.get("id"))
            self.unacked.pop(eid, None)
            if msg.get("routed"):
                if eid not in self.routed:
                    self.routed.append(eid)
            else:
                self.waiting.discard(eid)
                if msg.get("held"):
                    self.echo(held_note(msg["held"]))
                else:
                    self.echo(f"[not routed: {msg.get('dropped')}]")
        elif kind == "error":
            self.echo(f"[host: {msg.get('error')}]")
        self.changed.set()

    async def reader(self) -> None:
        """Print what the host sends; on a lost connection, reconnect and resend."""
        while not self._closing:
            client = self.client
            msg = None
            if client is not None:
                with contextlib.suppress(OSError, ConnectionError):
                    msg = await client.read()
            if msg is not None:
                self.handle(msg)
                continue
            if self._closing:
                return
            self.connected.clear()
            self.echo("[host went away; reconnecting…]")
            await self._reconnect()
            self.reconnects += 1
            self.echo(f"[reconnected to the {self.where}]")
            self.changed.set()
            await self.flush()

    async def _reconnect(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        self.client, self.host = await reconnect(
            self.home, "chat", self.host, grace=self.reconnect_grace, admin=self.admin
        )
        self._sent_on_this_connection = set()
        self.connected.set()

    async def close(self) -> None:
        self._closing = True
        if self.client is not None:
            await self.client.close()
        await stop_embedded(self.host)
        self.host = None
