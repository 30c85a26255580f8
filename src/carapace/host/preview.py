"""Replies shown while they are written, on channels that edit a message in place.

The runner publishes a turn's text in progress as ``outbox/.preview.json``
(``runner/preview.py``). While a session works on a message from a chat whose channel
streams replies (an adapter with ``edit`` and ``streams_replies``, and
``[channels.<type>] stream_replies`` not false), ``PreviewKeeper`` reads that file every
``POLL_S``, posts ONE preview message once the turn has been writing for ``SHOW_AFTER_S``
(a quick reply comes as one message, never as a preview), and edits it at most once per
``EDIT_INTERVAL_S`` per chat. When delivery reaches the turn's reply row (its id is the
preview's ``reply_id``), ``take`` hands it the preview message and delivery edits the
final text into it instead of posting a second message (``host/delivery.py``).

The file is agent-written, so it is hostile input: read through ``safefs`` (no link
followed, regular file, at most ``MAX_FILE_BYTES``, never blocking on a FIFO), in a worker
thread; anything that is not the expected JSON shape is ignored; the chat must be the
session's own or one its agent may send to (the delivery ACL), on a streaming channel;
control characters are dropped and the text is cut to ``MAX_SHOWN_CHARS``. A preview is
never shown longer than ``MAX_PREVIEW_S``.

A posted preview is recorded in the session's ``inbound.db`` (``carapace_preview``: reply
id, chat, platform message id), so a host restarted mid-stream goes on editing the same
message and delivery still edits the reply into it; and since an edit shown twice is shown
once, a reply re-sent after a crash (``resend``) is never a second message either (the
rest of a reply longer than one message is posted as any reply is).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from carapace import safefs
from carapace.channels.base import OutboundMessage
from carapace.db.connection import transaction
from carapace.db.destinations import channel_refusal
from carapace.db.session import SessionPaths
from carapace.errors import ConfigError
from carapace.host.delivery_log import delivery_key, host_tables
from carapace.host.sessions import SessionManager
from carapace.timefmt import iso, utcnow

logger = logging.getLogger(__name__)

PREVIEW_FILE = "outbox/.preview.json"
POLL_S = 0.5
EDIT_INTERVAL_S = 1.0
SHOW_AFTER_S = 1.0
GRACE_S = 30.0  # a runner may take this long to start before the keeper gives up
HEARTBEAT_FRESH_S = 10.0
MAX_PREVIEW_S = 1800.0
MAX_FILE_BYTES = 64 * 1024
MAX_SHOWN_CHARS = 3000
MAX_ID_CHARS = 128
KEEP_RECORDS_S = 7 * 24 * 3600.0  # a recorded preview is forgotten after a week
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

Target = tuple[str, str, str | None]


@dataclass(frozen=True)
class Preview:
    reply_id: str
    target: Target
    text: str
    done: bool
    reply: bool


def parse_preview(raw: bytes) -> Preview | None:
    """The preview file's content, or None when it is not the expected shape."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("v") != 1:
        return None
    rid, ct, pid, tid = (data.get(k) for k in ("reply_id", "channel_type", "platform_id",
                                               "thread_id"))  # fmt: skip
    text, done, reply = data.get("text"), data.get("done"), data.get("reply")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS for v in (rid, ct, pid)):
        return None
    if tid is not None and not (isinstance(tid, str) and len(tid) <= MAX_ID_CHARS):
        return None
    if not isinstance(text, str) or not isinstance(done, bool) or not isinstance(reply, bool):
        return None
    assert isinstance(rid, str) and isinstance(ct, str) and isinstance(pid, str)  # for mypy
    return Preview(rid, (ct, pid, tid), clean_text(text), done, reply)


def clean_text(text: str) -> str:
    """Shown text: no control or direction characters (newlines and tabs stay), cut."""
    out = _CONTROL.sub("", text).strip()
    return out if len(out) <= MAX_SHOWN_CHARS else out[: MAX_SHOWN_CHARS - 1].rstrip() + "…"


def read_preview(paths: SessionPaths) -> Preview | None:
    """The session's preview file, read link-free; None when missing, refused or bad."""
    try:
        raw = safefs.read_beneath(paths.root, PREVIEW_FILE, MAX_FILE_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, safefs.UnsafePathError) as exc:
        logger.debug("preview of %s refused: %s", paths.root.name, exc)
        return None
    return parse_preview(raw)


def stream_setting(settings_extra: Mapping[str, Any], channel_type: str) -> bool:
    """``[channels.<type>] stream_replies`` (default true); ``ConfigError`` unless a bool."""
    chans = settings_extra.get("channels", {})
    entry = chans.get(channel_type, {}) if isinstance(chans, dict) else {}
    value = entry.get("stream_replies", True) if isinstance(entry, dict) else True
    if not isinstance(value, bool):
        raise ConfigError(f"carapace.toml: [channels.{channel_type}] stream_replies must be "
                          f"true or false, not {value!r}")  # fmt: skip
    return value


def check_stream_settings(settings_extra: Mapping[str, Any]) -> None:
    chans = settings_extra.get("channels", {})
    for name in chans if isinstance(chans, dict) else ():
        stream_setting(settings_extra, str(name))


@dataclass
class _Shown:
    reply_id: str
    target: Target
    first_seen: float
    pm: str | None = None  # the preview message on the platform
    text: str = ""  # what it shows
    last_edit: float = float("-inf")
    broken: bool = False  # a post or edit failed: no more edits (the reply comes anyway)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PreviewKeeper:
    def __init__(
        self,
        db: sqlite3.Connection,
        sessions: SessionManager,
        adapters: Mapping[str, Any],
        settings_extra: Mapping[str, Any],
        *,
        is_running: Callable[[str], bool],
        heartbeat_age: Callable[[str], float | None],
        monotonic: Callable[[], float] = time.monotonic,
        open_inbound: Callable[[SessionPaths], sqlite3.Connection] | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        check_stream_settings(settings_extra)
        self.db = db
        self.sessions = sessions
        self.adapters = adapters
        self.settings_extra = settings_extra
        self.is_running = is_running
        self.heartbeat_age = heartbeat_age
        self.monotonic = monotonic
        self.open_inbound = open_inbound  # the session's inbound.db with the host's tables
        self.now = now
        self.shown: dict[str, _Shown] = {}
        self._taken: dict[str, str] = {}  # session → the last reply id delivery took
        self._takes: dict[str, int] = {}  # session → replies taken (the loop ends after one)
        self._again: set[str] = set()  # sessions engaged again while their loop ran
        self._chat_edit: dict[Target, float] = {}  # per chat: its last preview post or edit
        self._refused: dict[str, str] = {}  # session → the reply id last refused (logged once)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- which channels ---------------------------------------------------------------------

    def streams(self, channel_type: str) -> bool:
        adapter = self.adapters.get(channel_type)
        if adapter is None or getattr(adapter, "edit", None) is None:
            return False
        if not getattr(adapter, "streams_replies", False):
            return False
        return stream_setting(self.settings_extra, channel_type)

    def channels(self) -> list[str]:
        """The channel types shown previews (``CARAPACE_STREAM_CHANNELS`` for runners)."""
        return sorted(ct for ct in self.adapters if self.streams(ct))

    # -- polling ----------------------------------------------------------------------------

    def start(self, session_id: str, channel_type: str | None = None) -> None:
        """Watch the session's preview (a message engaged it, or its runner starts again
        with a preview still open). No-op for a chat on a channel that does not stream."""
        if channel_type is not None and not self.streams(channel_type):
            return
        task = self._tasks.get(session_id)
        if task is not None and not task.done():
            self._again.add(session_id)
            return
        loop = asyncio.get_running_loop()
        self._tasks[session_id] = loop.create_task(self._run(session_id))

    def resume(self, session_id: str) -> None:
        """A runner starts: keep watching when a preview of its session is open."""
        if session_id in self.shown:
            self.start(session_id)

    async def _run(self, session_id: str) -> None:
        started = self.monotonic()
        takes = self._takes.get(session_id, 0)
        self._again.discard(session_id)
        try:
            while True:
                await asyncio.sleep(POLL_S)
                await self.poll(session_id)
                now = self.monotonic()
                if now - started > MAX_PREVIEW_S:
                    return
                if self._takes.get(session_id, 0) != takes and session_id not in self.shown:
                    if session_id not in self._again:
                        return  # the reply went out and no other message is waiting
                    self._again.discard(session_id)
                    takes = self._takes.get(session_id, 0)
                if now - started <= GRACE_S:
                    continue
                age = self.heartbeat_age(session_id)
                if not self.is_running(session_id) or age is None or age > HEARTBEAT_FRESH_S:
                    return  # the turn is over or the runner is gone
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("preview of session %s stopped", session_id)
        finally:
            if self._tasks.get(session_id) is asyncio.current_task():
                del self._tasks[session_id]

    async def poll(self, session_id: str) -> None:
        """Read the preview once and post or edit what it says."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        preview = await asyncio.to_thread(read_preview, self.sessions.paths(session))
        if preview is None or preview.reply_id == self._taken.get(session_id):
            return
        if not self._allowed(session, preview.target):
            if self._refused.get(session_id) != preview.reply_id:  # one line per turn
                self._refused[session_id] = preview.reply_id
                logger.warning("preview of session %s for %s:%s refused: not its chat",
                               session_id, preview.target[0], preview.target[1])  # fmt: skip
            return
        state = self.shown.get(session_id)
        now = self.monotonic()
        if state is None or state.reply_id != preview.reply_id:
            if preview.done:
                return  # a finished turn is never shown as a preview
            state = _Shown(preview.reply_id, preview.target, now)
            kept = self._recorded(session, preview.reply_id)
            if kept is not None and kept[0] == preview.target:  # posted before a restart
                state.pm, state.first_seen = kept[1], now - SHOW_AFTER_S
            self.shown[session_id] = state
        if state.target != preview.target or state.broken:
            return
        if now - state.first_seen > MAX_PREVIEW_S:
            return
        async with state.lock:
            if self.shown.get(session_id) is not state:
                return  # taken by delivery meanwhile
            if preview.done and preview.reply:
                return  # the reply row edits it (``take``)
            if preview.done:  # no reply row: the last text stays, complete
                if state.pm is not None and preview.text and preview.text != state.text:
                    await self._edit(session_id, state, preview.text, now)
                del self.shown[session_id]
                return
            await self._show(session_id, state, preview.text, now)

    async def _show(self, session_id: str, state: _Shown, text: str, now: float) -> None:
        if not text:
            return
        if state.pm is None:
            if now - state.first_seen < SHOW_AFTER_S:
                return
            ct, pid, tid = state.target
            msg = OutboundMessage("chat", {"text": text},
                                  key=delivery_key(session_id, f"{state.reply_id}:preview"))  # fmt: skip
            try:
                pm = await self.adapters[ct].deliver(pid, tid, msg)
            except Exception as exc:
                logger.info("preview of session %s not posted: %s", session_id, exc)
                state.broken = True
                return
            if pm is None:
                state.broken = True  # nothing to edit later
                return
            state.pm, state.text, state.last_edit = str(pm), text, now
            self._chat_edit[state.target] = now
            await self._record(session_id, state)
            return
        last = max(state.last_edit, self._chat_edit.get(state.target, float("-inf")))
        if text != state.text and now - last >= EDIT_INTERVAL_S:  # once a second per chat
            await self._edit(session_id, state, text, now)

    async def _edit(self, session_id: str, state: _Shown, text: str, now: float) -> None:
        ct, pid, tid = state.target
        assert state.pm is not None
        try:
            await self.adapters[ct].edit(pid, tid, state.pm, text)
        except Exception as exc:
            logger.info("preview of session %s not edited: %s", session_id, exc)
            state.broken = True
            return
        state.text, state.last_edit = text, now
        self._chat_edit[state.target] = now

    def _allowed(self, session: Any, target: Target) -> bool:
        """A chat the session may send to (delivery's check), on a streaming channel."""
        ct, pid, _tid = target
        return (
            self.streams(ct)
            and channel_refusal(
                self.db, session.agent_group_id, session.messaging_group_id, ct, pid
            )
            is None
        )

    # -- delivery's side --------------------------------------------------------------------

    async def take(self, session_id: str, row_id: str, target: Target,
                   inb: sqlite3.Connection | None = None) -> str | None:  # fmt: skip
        """Delivery is about to send row ``row_id`` to ``target``: the preview message to
        edit it into when the row is the shown turn's reply, else None. Either way a row
        with the preview's id ends that preview (no later post or edit). ``inb`` (the
        session's inbound.db): where a preview posted before a host restart is recorded."""
        state = self.shown.get(session_id)
        if state is None or state.reply_id != row_id:
            if not row_id.endswith("-reply"):
                return None
            self._taken[session_id] = row_id  # its preview file is never shown now
            self._takes[session_id] = self._takes.get(session_id, 0) + 1
            kept = _lookup(inb, row_id) if inb is not None else None
            return kept[1] if kept is not None and kept[0] == target else None
        async with state.lock:  # a post or edit in flight finishes first
            if self.shown.get(session_id) is state:
                del self.shown[session_id]
            self._taken[session_id] = row_id
            self._takes[session_id] = self._takes.get(session_id, 0) + 1
            return state.pm if state.target == target else None

    async def _record(self, session_id: str, state: _Shown) -> None:
        """The posted preview, on disk (``carapace_preview`` in inbound.db), so that after a
        host restart the reply is still edited into it (an edit shown twice is shown once).
        Written on the session's writer thread: its agent may keep the file locked, and
        the event loop never waits for that."""
        session = self.sessions.get(session_id)
        if self.open_inbound is None or session is None or state.pm is None:
            return
        ct, pid, tid = state.target
        now = self.now()
        reply_id, pm = state.reply_id, state.pm

        def write(inb: sqlite3.Connection) -> None:
            host_tables(inb)
            with transaction(inb):
                inb.execute("DELETE FROM carapace_preview WHERE created_at < ?",
                            (iso(now - timedelta(seconds=KEEP_RECORDS_S)),))  # fmt: skip
                inb.execute(
                    "INSERT OR REPLACE INTO carapace_preview (reply_id, channel_type, "
                    "platform_id, thread_id, platform_message_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (reply_id, ct, pid, tid, pm, iso(now)),
                )

        try:
            await self.sessions.writers.call(session_id, self.sessions.paths(session), write)
        except (sqlite3.Error, OSError) as exc:  # only a restart's edit is lost
            logger.warning("preview of session %s not recorded: %s", session_id, exc)

    def _recorded(self, session: Any, reply_id: str) -> tuple[Target, str] | None:
        if self.open_inbound is None:
            return None
        try:
            inb = self.open_inbound(self.sessions.paths(session))
            try:
                return _lookup(inb, reply_id)
            finally:
                self.sessions.done_with(inb)
        except sqlite3.Error:
            return None

    async def stop_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


def _lookup(inb: sqlite3.Connection, reply_id: str) -> tuple[Target, str] | None:
    try:
        row = inb.execute(
            "SELECT channel_type, platform_id, thread_id, platform_message_id "
            "FROM carapace_preview WHERE reply_id=?",
            (reply_id,),
        ).fetchone()
    except sqlite3.Error:
        return None
    return ((row[0], row[1], row[2]), row[3]) if row is not None else None


async def edit_into_preview(
    adapter: Any, pid: str, tid: str | None, shown: str, msg: OutboundMessage
) -> str | None:
    """The reply edited into the preview message ``shown`` (host/preview.py); returns its
    id, or None when the reply must be posted instead: it has files or anything but text,
    or the edit failed (the preview then stays as it was last shown). A text longer than
    the adapter's ``edit_chars`` is cut at a boundary: the first part edited in, the rest
    posted as a reply of its own, so every word is shown once."""
    content = msg.content
    if msg.files or not isinstance(content, dict) or set(content) - {"text"}:
        return None
    text = content.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    head, rest = split_for_edit(text, int(getattr(adapter, "edit_chars", 2000)))
    try:
        await adapter.edit(pid, tid, shown, head)
    except Exception as exc:
        logger.warning("reply %s not edited into its preview (%s): posting it", msg.message_out_id,
                       exc)  # fmt: skip
        return None
    if rest:
        await adapter.deliver(pid, tid, replace(msg, content={**content, "text": rest}))
    return shown


def split_for_edit(text: str, limit: int) -> tuple[str, str]:
    """``text`` as (what one edit shows, the rest): cut at the last paragraph break, line
    break or space within ``limit`` UTF-16 units (at least as strict as every platform's
    count), else hard."""
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return text, ""
    lo, hi = 0, min(len(text), limit)
    while lo < hi:  # the longest prefix within the limit
        mid = (lo + hi + 1) // 2
        if len(text[:mid].encode("utf-16-le")) // 2 <= limit:
            lo = mid
        else:
            hi = mid - 1
    window = text[:lo]
    for sep in ("\n\n", "\n", " "):
        cut = window.rfind(sep)
        if cut > lo // 4:
            return window[:cut].rstrip(), text[cut:].lstrip()
    return window, text[lo:]
