"""Inbound routing: channel event → ``messages_in`` row(s) (spec/host.md §3).

Deviations from NanoClaw (listed in docs/compat.md):
* Unknown chats and plain chatter on unwired chats write nothing, not even ``users``
  (§11.4 item 38): senders are resolved only once a wired chat is found.
* An invalid or unsafe ``pattern`` never engages (NanoClaw fails open); the text tested
  is bounded to ``PATTERN_TEXT_LIMIT`` characters.
* ``accumulate`` stores context only for senders who would pass the access gate (§11.3 item 30).
* One audit row per event with its first reason (§11.4 item 39).
* ``request_approval`` keeps the message in ``pending_sender_approvals.original_message``
  and hands it to the approval hook (replayed on approval).
* Command-gate denials are delivered directly through the adapter (§11.1 items 1–2).
* The wake is not awaited inside the fan-out loop (§11.2 item 24).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from carapace.channels.base import ChannelAdapter, InboundEvent, OutboundMessage
from carapace.db import approvals, groups, messaging, users
from carapace.db.dropped import record_dropped
from carapace.db.messaging import MessagingGroup, Wiring
from carapace.db.sessions import find_session
from carapace.errors import CarapaceError, ValidationError
from carapace.host.sessions import SessionManager
from carapace.jsonutil import loads_or
from carapace.permissions.access import sender_handle
from carapace.timefmt import iso, new_id

logger = logging.getLogger(__name__)

PATTERN_TEXT_LIMIT = 4096
ROUTING_AT_ONCE = 64  # events routed concurrently (bounds one event-loop pass, issue 19)
# routing work started in one pass of the event loop: a route that would start after the
# slice is used waits for the next pass, so timers, sockets and deliveries run between
# (1 ms: a pass stays under ~5 ms in `bench burst`; a burst loses ~20 % of its rate)
ROUTE_SLICE_S = 0.001
FILTERED_COMMANDS = frozenset(
    {"/help", "/login", "/logout", "/doctor", "/config", "/remote-control"}
)
ADMIN_COMMANDS = frozenset({"/clear", "/compact", "/context", "/cost", "/files"})


@dataclass(frozen=True)
class Routed:
    session_id: str
    agent_group_id: str
    message_id: str
    trigger: int


@dataclass
class RouteResult:
    routed: list[Routed] = field(default_factory=list)
    dropped_reason: str | None = None
    held: list[str] = field(default_factory=list)  # pending_sender_approvals ids
    denied: str | None = None


# returns the approval id while the message is held (None: it was dropped after all)
SenderApprovalHook = Callable[
    [approvals.PendingSenderApproval, InboundEvent], Awaitable[str | None]
]
ChannelRequestHook = Callable[[MessagingGroup, InboundEvent], Awaitable[None]]
InterceptHook = Callable[[InboundEvent], Awaitable[bool]]


async def _noop_sender(
    approval: approvals.PendingSenderApproval, event: InboundEvent
) -> str | None:
    return approval.id


async def _noop_channel(mg: MessagingGroup, event: InboundEvent) -> None:
    return None


async def _noop_intercept(event: InboundEvent) -> bool:
    return False


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """The compiled engage pattern, or None when it breaks the safe-regex policy."""
    try:
        messaging.validate_pattern(pattern)
        return re.compile(pattern)
    except (ValidationError, re.error):
        return None


def content_doc(content: str) -> dict[str, Any]:
    doc = loads_or(content, None)
    if isinstance(doc, dict):
        return doc
    return {"text": content}


def can_access(db: sqlite3.Connection, user_id: str | None, agent_group_id: str) -> bool:
    """Owner, global admin, admin of the group, or member (spec §6.2)."""
    if user_id is None:
        return False
    row = db.execute(
        "SELECT 1 FROM user_roles WHERE user_id=? AND (role='owner' OR (role='admin' AND "
        "(agent_group_id IS NULL OR agent_group_id=?))) LIMIT 1",
        (user_id, agent_group_id),
    ).fetchone()
    return row is not None or users.is_member(db, user_id, agent_group_id)


def is_admin(db: sqlite3.Connection, user_id: str | None, agent_group_id: str) -> bool:
    if user_id is None:
        return False
    row = db.execute(
        "SELECT 1 FROM user_roles WHERE user_id=? AND role IN ('owner','admin') AND "
        "(agent_group_id IS NULL OR agent_group_id=?) LIMIT 1",
        (user_id, agent_group_id),
    ).fetchone()
    return row is not None


def command_gate(text: str, db: sqlite3.Connection, user_id: str | None, ag: str) -> str:
    """``pass`` / ``filter`` / ``deny`` (spec §3.9)."""
    t = text.strip()
    if not t.startswith("/"):
        return "pass"
    cmd = t.split()[0].lower()
    if cmd in FILTERED_COMMANDS:
        return "filter"
    if cmd in ADMIN_COMMANDS:
        return "pass" if is_admin(db, user_id, ag) else "deny"
    return "pass"


class Router:
    def __init__(
        self,
        db: sqlite3.Connection,
        sessions: SessionManager,
        adapters: dict[str, ChannelAdapter],
        wake: Callable[[str], None],
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.adapters = adapters
        self.wake = wake
        self.on_sender_approval: SenderApprovalHook = _noop_sender
        self.on_channel_request: ChannelRequestHook = _noop_channel
        # approvals: card reply codes / new-agent names are answers, not messages
        self.on_intercept: InterceptHook = _noop_intercept
        self._admit = asyncio.Semaphore(ROUTING_AT_ONCE)
        self._tickets = 0  # routes admitted so far
        self._turns = 0  # routes that went past their turn (in admission order)
        self._abandoned: set[int] = set()  # tickets of routes cancelled before their turn
        self._slice_end: float | None = None  # when this loop pass's routing slice ends

    def engages(self, w: Wiring, text: str, event: InboundEvent, mg: MessagingGroup) -> bool:
        mode = w.mode
        if mode == "pattern":
            pat = w.engage_pattern
            if pat is None or pat == ".":
                return True
            compiled = compile_pattern(pat)
            if compiled is None:
                logger.warning("wiring %s has an unsafe engage pattern; not engaging", w.id)
                return False
            return compiled.search(text[:PATTERN_TEXT_LIMIT]) is not None
        if mode == "mention":
            return event.message.is_mention is True
        if mode == "mention-sticky":
            if event.message.is_mention is True:
                return True
            if not mg.is_group:
                return False
            return find_session(self.db, w.agent_group_id, mg.id, event.thread_id) is not None
        return False

    async def route(self, event: InboundEvent, *, now: datetime) -> RouteResult:
        """Route one inbound event. At most ``ROUTING_AT_ONCE`` events are routed at a time:
        a burst of thousands (a backlog after a reconnect, a webhook flood) would otherwise
        run every one's first steps in a single pass of the event loop and hold it for
        hundreds of ms; the rest wait their turn (in order) and still share group commits."""
        async with self._admit:
            ticket = self._tickets
            self._tickets += 1
            await self._turn(ticket)
            return await self._route(event, now=now)

    async def _turn(self, ticket: int) -> None:
        """Wait, if need be, for a pass of the event loop whose routing slice is not used up
        (``ROUTE_SLICE_S``). The first route of a pass opens its slice and schedules its
        end for the next pass; routes queued behind a used slice yield (in order: the
        ready queue is first in, first out) and go on in the next pass.

        Opening a slice checks the central-DB memo: another connection's commit (a wiring
        removed, access revoked) drops what it holds. Routes that start in one slice (at
        most ``ROUTE_SLICE_S`` of one pass) see the database as at its start, as if they
        had arrived a moment earlier; a burst makes one ``data_version`` read per slice
        instead of one per message.

        Routes go on in the order they were admitted (``ticket``): one that yielded behind
        a used slice is not overtaken by one that came later."""
        while True:
            while self._turns in self._abandoned:  # cancelled while waiting for its turn
                self._abandoned.discard(self._turns)
                self._turns += 1
            if ticket == self._turns:
                t = time.perf_counter()
                if self._slice_end is None:
                    self._turns += 1
                    self._slice_end = t + ROUTE_SLICE_S
                    asyncio.get_running_loop().call_soon(self._next_pass)
                    self.sessions.memo.check()
                    return
                if t < self._slice_end:
                    self._turns += 1
                    return
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self._abandoned.add(ticket)
                raise

    def _next_pass(self) -> None:
        self._slice_end = None

    async def _route(self, event: InboundEvent, *, now: datetime) -> RouteResult:
        result = RouteResult()
        adapter = self.adapters.get(event.channel_type)
        if adapter is not None and not adapter.supports_threads and event.thread_id is not None:
            event = InboundEvent(event.channel_type, event.platform_id, None, event.message,
                                 event.reply_to)  # fmt: skip
        if await self.on_intercept(event):
            return result
        mention = event.message.is_mention is True
        memo = self.sessions.memo
        mg = memo.get(("mg", event.channel_type, event.platform_id),
                      lambda: messaging.get_messaging_group_by_platform(
                          self.db, event.channel_type, event.platform_id))  # fmt: skip
        if mg is None:
            if not mention:
                return result
            mg = messaging.create_messaging_group(
                self.db, event.channel_type, event.platform_id,
                is_group=bool(event.message.is_group), unknown_sender_policy="request_approval",
                now=now,
            )  # fmt: skip
            logger.info("messaging group %s auto-created on mention", mg.id)
        mg_id = mg.id
        wirings = memo.get(("wirings", mg_id),
                           lambda: tuple(messaging.wirings_for_chat(self.db, mg_id)))  # fmt: skip
        doc = content_doc(event.message.content)
        handle, display = sender_handle(doc)
        sender_name = doc.get("sender") if isinstance(doc.get("sender"), str) else None
        if not wirings:
            if not mention or mg.denied_at:
                return result
            self._audit(event, "no_agent_wired", None, sender_name, mg, now)
            result.dropped_reason = "no_agent_wired"
            await self.on_channel_request(mg, event)
            return result
        user_id: str | None = None
        if handle:
            user_id = users.user_id_for(event.channel_type, handle) if ":" not in handle else handle
            uid = user_id
            known = memo.get(("user", uid), lambda: users.get_user(self.db, uid))
            if not users.is_current(known, display):
                try:
                    users.upsert_user(self.db, user_id, event.channel_type, display, now=now)
                except CarapaceError:
                    user_id = None
        text = doc.get("text") if isinstance(doc.get("text"), str) else ""
        assert isinstance(text, str)
        first_refusal: str | None = None
        for w in wirings:
            ag = w.agent_group_id
            if memo.get(("ag", ag), functools.partial(groups.get_agent_group, self.db, ag)) is None:
                continue
            engages = self.engages(w, text, event, mg)
            access_ok = mg.unknown_sender_policy == "public" or self._access(user_id, ag)
            scope_ok = w.scope == "all" or self._access(user_id, ag)
            if engages and access_ok and scope_ok:
                await self._deliver(event, mg, w, user_id, doc, text, True, result, now)
            elif engages and not access_ok:
                reason = f"unknown_sender_{mg.unknown_sender_policy}"
                first_refusal = first_refusal or reason
                if mg.unknown_sender_policy == "request_approval":
                    await self._hold(event, mg, w, user_id, sender_name, result, now)
                logger.info("message %s dropped for %s: %s", event.message.id,
                            w.agent_group_id, reason)  # fmt: skip
            elif engages:
                first_refusal = first_refusal or "sender_scope"
            elif w.ignored == "accumulate" and access_ok and scope_ok:
                await self._deliver(event, mg, w, user_id, doc, text, False, result, now)
        if first_refusal is not None:
            result.dropped_reason = first_refusal
        elif not result.routed and result.denied is None and result.dropped_reason is None:
            result.dropped_reason = "no_agent_engaged"
        if result.dropped_reason and result.dropped_reason != "sender_scope":
            self._audit(event, result.dropped_reason, user_id, sender_name, mg, now)
        return result

    def _access(self, user_id: str | None, agent_group_id: str) -> bool:
        return bool(self.sessions.memo.get(("access", user_id, agent_group_id),
                                           lambda: can_access(self.db, user_id, agent_group_id)))  # fmt: skip

    def _audit(
        self, event: InboundEvent, reason: str, user_id: str | None, sender_name: str | None,
        mg: MessagingGroup, now: datetime,
    ) -> None:  # fmt: skip
        record_dropped(
            self.db, event.channel_type, event.platform_id, reason, user_id=user_id,
            sender_name=sender_name, messaging_group_id=mg.id, now=now,
        )  # fmt: skip

    async def _hold(
        self, event: InboundEvent, mg: MessagingGroup, w: Wiring, user_id: str | None,
        sender_name: str | None, result: RouteResult, now: datetime,
    ) -> None:  # fmt: skip
        if user_id is None:
            return
        owner = next(iter(users.owners(self.db)), None)
        if owner is None:
            logger.warning("no owner to approve sender %s; message %s dropped", user_id,
                           event.message.id)  # fmt: skip
            return
        row = approvals.create_sender_approval(
            self.db, mg.id, w.agent_group_id, user_id, event.to_json(), owner,
            sender_name=sender_name, title="New sender", options=["approve", "reject"], now=now,
        )  # fmt: skip
        if row is None:  # this sender waits for a decision already: keep this one too
            row = approvals.sender_approval_for(self.db, mg.id, user_id)
        if row is not None and row.agent_group_id == w.agent_group_id:
            held = await self.on_sender_approval(row, event)
            if held is not None and held not in result.held:
                result.held.append(held)

    async def _deliver(
        self, event: InboundEvent, mg: MessagingGroup, w: Wiring, user_id: str | None,
        doc: dict[str, Any], text: str, wake: bool, result: RouteResult, now: datetime,
    ) -> None:  # fmt: skip
        adapter = self.adapters.get(event.channel_type)
        mode = w.sessions
        if (
            adapter is not None
            and adapter.supports_threads
            and mode != "agent-shared"
            and mg.is_group
        ):
            mode = "per-thread"
        address = event.reply_to or None
        ct = address.channel_type if address else event.channel_type
        pid = address.platform_id if address else event.platform_id
        tid = address.thread_id if address else event.thread_id
        if event.message.kind in ("chat", "chat-sdk"):
            gate = command_gate(text, self.db, user_id, w.agent_group_id)
            if gate == "filter":
                logger.info("command filtered: %s", text.split()[0])
                return
            if gate == "deny":
                cmd = text.strip().split()[0].lower()
                result.denied = cmd
                await self._deny(ct, pid, tid, cmd)
                return
        session, _ = await self.sessions.resolve_async(w.agent_group_id, mg.id, event.thread_id,
                                                       mode, now=now)  # fmt: skip
        mid = f"{event.message.id or new_id('msg', now)}:{w.agent_group_id}"
        refused = False

        async def outcome(seq: int | None, exc: BaseException | None) -> None:
            nonlocal refused
            if exc is None:
                if wake and seq is not None:  # None: the id was there (a redelivered event)
                    self.wake(session.id)
                return
            # this session's inbound.db refuses it for good (a planted trigger, a corrupt
            # file): retrying would hold up every later message of the chat. The sender
            # hears it; the message is dropped; doctor names the file.
            refused = True
            result.routed[:] = [r for r in result.routed if r.message_id != mid or
                                r.session_id != session.id]  # fmt: skip
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            reason = f"not stored: {why}"
            logger.error("message %s for session %s %s", mid, session.id, reason)
            result.dropped_reason = result.dropped_reason or reason
            await self._tell(ct, pid, tid, f"Your message could not be stored for the agent "
                             f"({why}), so it was not delivered. The host's operator "
                             "should run `carapace doctor`.")  # fmt: skip

        async def delayed(exc: BaseException) -> None:  # kept in the journal meanwhile
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            await self._tell(ct, pid, tid, f"Your message is kept but cannot reach the agent "
                             f"yet ({why}); it will as soon as the host can store it. No "
                             "need to send it again.")  # fmt: skip

        # returns once the row is durable (journaled); a full disk raises: the channel
        # retries (it is not acknowledged)
        await self.sessions.accept(
            session,
            {
                "id": mid, "kind": event.message.kind,
                "timestamp": event.message.timestamp or iso(now),
                "platform_id": pid, "channel_type": ct, "thread_id": tid,
                "content": event.message.content, "trigger": 1 if wake else 0,
            },
            now=now, outcome=outcome, delayed=delayed,
        )  # fmt: skip
        if refused:  # known at once (a manager without a journal)
            return
        result.routed.append(Routed(session.id, w.agent_group_id, mid, int(wake)))
        logger.info("routed %s to session %s (trigger %d)", mid, session.id, int(wake),
                    extra={"session_id": session.id, "agent_group_id": w.agent_group_id,
                           "message_id": mid, "chat_id": pid, "channel_type": ct})  # fmt: skip

    async def _deny(self, ct: str, pid: str, tid: str | None, cmd: str) -> None:
        await self._tell(ct, pid, tid, f"Permission denied: {cmd} requires admin access.")

    async def _tell(self, ct: str, pid: str, tid: str | None, text: str) -> None:
        """A notice straight to the chat (best effort: logged when it cannot be sent)."""
        adapter = self.adapters.get(ct)
        if adapter is None:
            logger.warning("notice to %s:%s not delivered: no adapter (%s)", ct, pid, text)
            return
        try:
            await adapter.deliver(pid, tid, OutboundMessage("chat", {"text": text}))
        except CarapaceError as exc:
            logger.warning("notice to %s:%s not delivered: %s (%s)", ct, pid, exc, text)
