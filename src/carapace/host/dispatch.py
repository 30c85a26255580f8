"""Where one outbound row goes (spec §4.3): a system action, another agent's session, or a
channel adapter (an edit, a reaction, a question with buttons, files from the outbox, a
reply shown as it was written). Delivery (host/delivery.py) decides *when* a row is sent
and commits the outcomes; :func:`deliver_row` sends one row (:func:`send_row`) and notes
its outcome: delivered, failed for good (the agent is told), or an attempt to retry."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from carapace.channels.base import ChannelUnavailable, OutboundFile, OutboundMessage
from carapace.db.destinations import channel_refusal
from carapace.db.session import SessionPaths
from carapace.db.sessions import Session
from carapace.errors import DeliveryError
from carapace.host.a2a_guard import A2AStopped, write_stop_note
from carapace.host.actions import route_agent_message
from carapace.host.delivery_log import (
    MAX_DELIVERY_ATTEMPTS,
    UNAVAILABLE_MARK,
    UNAVAILABLE_RETRY_S,
    UNAVAILABLE_TTL_S,
    backoff_s,
    delivery_key,
)
from carapace.host.outbox_files import clear_outbox, read_outbox_files
from carapace.host.outbox_reader import CONTENT_REFUSED, OutRow
from carapace.host.preview import edit_into_preview
from carapace.jsonutil import loads_or
from carapace.timefmt import parse_ts, sqlite_ts

if TYPE_CHECKING:
    from carapace.host.delivery import Delivery

logger = logging.getLogger(__name__)


async def deliver_row(
    d: Delivery,
    session: Session,
    paths: SessionPaths,
    row: OutRow,
    inb: sqlite3.Connection,
    states: dict[str, dict[str, Any]],
    now: datetime,
    resend: bool = False,
) -> str | None:
    """Send one row; 'delivered' / 'failed' (noted in ``d.records``, committed by the
    pass), or None when it waits for a retry (its attempt noted)."""
    rid = row["id"]
    st = d.records(session.id).state(states, rid)
    try:
        pm = await send_row(d, session, paths, row, inb, now, resend=resend)
    except ChannelUnavailable as exc:
        first = parse_ts(st["first_seen"]) if st else now
        if (now - first).total_seconds() >= UNAVAILABLE_TTL_S:
            return _fail(d, session, row, f"no reader for {UNAVAILABLE_TTL_S:g} s", now)
        d.records(session.id).record_attempt(  # (looked up after the send's awaits)
            rid, 0, now + timedelta(seconds=UNAVAILABLE_RETRY_S), UNAVAILABLE_MARK + str(exc),
            now, st,
        )  # fmt: skip
        logger.info("message %s of session %s waits for a reader: %s", rid, session.id, exc)
        return None
    except Exception as exc:
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        attempts = (int(st["attempts"] or 0) if st else 0) + 1
        if isinstance(exc, A2AStopped):
            return _fail(d, session, row, str(exc), now, stopped=exc)
        if permanent or attempts >= MAX_DELIVERY_ATTEMPTS:
            return _fail(d, session, row, str(exc) or type(exc).__name__, now)
        d.records(session.id).record_attempt(
            rid, 1, now + timedelta(seconds=backoff_s(attempts)), str(exc), now, st
        )
        logger.warning("delivery of %s (session %s) failed, attempt %d: %s",
                       rid, session.id, attempts, exc)  # fmt: skip
        return None
    d.records(session.id).outcomes[rid] = ("delivered", pm, sqlite_ts(now))
    if pm:
        d.note_sent(session.id, rid, pm)
    logger.info("delivered %s (session %s, seq %s) to %s:%s", rid, session.id, row["seq"],
                row["channel_type"], row["platform_id"],
                extra={"session_id": session.id, "agent_group_id": session.agent_group_id,
                       "message_id": rid, "chat_id": row["platform_id"],
                       "channel_type": row["channel_type"]})  # fmt: skip
    return "delivered"


def _fail(d: Delivery, session: Session, row: OutRow, err: str, now: datetime, *,
          stopped: A2AStopped | None = None) -> str:  # fmt: skip
    """The row failed for good: noted, and the agent told (the loop guard: one note)."""
    rid = row["id"]
    d.records(session.id).outcomes[rid] = ("failed", None, sqlite_ts(now))
    logger.error("delivery of %s (session %s) failed for good: %s", rid, session.id, err,
                 extra={"session_id": session.id, "agent_group_id": session.agent_group_id,
                        "message_id": rid, "chat_id": row["platform_id"]})  # fmt: skip
    if stopped is not None:  # the loop guard: one note, carrying the hop count
        if stopped.notify:
            write_stop_note(d.sessions, session, row["seq"], stopped, now)
            d.wake(session.id)
        return "failed"
    where = "another agent" if row["channel_type"] == "agent" else (
        f"{row['channel_type']}:{row['platform_id']}" if row["channel_type"] else "(no address)"
    )  # fmt: skip
    if row["kind"] == "system":
        where = "the host (system action)"
    d.tell_agent(
        session, f"Your message (seq {row['seq']}) to {where} could not be delivered: {err}", now
    )
    return "failed"


async def send_row(
    d: Delivery,
    session: Session,
    paths: SessionPaths,
    row: OutRow,
    inb: sqlite3.Connection,
    now: datetime,
    *,
    resend: bool = False,
) -> str | None:
    """Spec §4.3: one outbound row to where it goes (a system action, another agent, a
    channel). Returns the platform message id (or None); raises ``DeliveryError``."""
    if row["content"] is None:
        raise DeliveryError(CONTENT_REFUSED[row.get("content_refused") or "size"], permanent=True)
    content = loads_or(row["content"], None)
    if content is None:
        raise DeliveryError("outbound content is not JSON", permanent=True)
    if row["kind"] == "system":
        if not isinstance(content, dict):
            raise DeliveryError("system row content is not an object", permanent=True)
        await d.actions.handle(session, content, inb, now)
        return None
    ct, pid, tid = row["channel_type"], row["platform_id"], row["thread_id"]
    if ct == "agent":
        await route_agent_message(d.db, d.sessions, session, row, inb, d.wake, now, d.a2a_guard)
        return None
    if not ct or not pid:
        raise DeliveryError("outbound row without channel_type/platform_id", permanent=True)
    # (kept in the memo the pass checked at its start: exact, db/memo.py)
    refusal = d.sessions.memo.get(
        ("refusal", session.agent_group_id, session.messaging_group_id, ct, pid),
        lambda: channel_refusal(d.db, session.agent_group_id, session.messaging_group_id,
                                ct, pid),
    )  # fmt: skip
    if refusal is not None:
        raise DeliveryError(refusal, permanent=True)
    adapter = d.adapters.get(ct)
    if adapter is None:
        raise DeliveryError(f"no channel adapter for {ct!r}")
    if isinstance(content, dict):
        op = content.get("operation")
        if op == "edit" and hasattr(adapter, "edit"):
            text = content.get("text") or content.get("markdown") or ""
            await adapter.edit(pid, tid, d.sent_as(session.id, content.get("messageId")), str(text))
            return None
        if op == "reaction" and hasattr(adapter, "react"):
            await adapter.react(pid, tid, d.sent_as(session.id, content.get("messageId")),
                                str(content.get("emoji")))  # fmt: skip
            return None
        if (
            content.get("type") == "ask_question"
            and content.get("questionId")
            and content.get("title")
            and isinstance(content.get("options"), list)
        ):
            from carapace.permissions.questions import record_question  # approvals engine

            content = record_question(
                d.db, session.id, row["id"], content, channel_type=ct, platform_id=pid,
                thread_id=tid, now=now,
            )  # fmt: skip
    answers: tuple[str, ...] = ()
    if isinstance(content, dict) and "answers" in content:
        content = dict(content)
        answers = answers_of(content.pop("answers"))
    files: list[OutboundFile] = []
    note: str | None = None
    named_files = (
        isinstance(content, dict) and isinstance(content.get("files"), list) and content["files"]
    )
    if named_files:  # (up to 50 MB the agent wrote: read in a worker thread, not on the loop)
        read = await asyncio.to_thread(read_outbox_files, paths, row["id"], content["files"])
        files = read.files
        note = read.note(f"(seq {row['seq']})")
        text = content.get("text") or content.get("markdown")
        if not files and not (isinstance(text, str) and text.strip()):
            raise DeliveryError(f"nothing left to send: {note}", permanent=True)
    msg = OutboundMessage(
        row["kind"], content, tuple(files), row["id"], row["in_reply_to"],
        key=delivery_key(session.id, row["id"]), resend=resend, answers=answers,
    )  # fmt: skip
    pm = None
    if d.previews is not None and row["kind"] == "chat":
        shown = await d.previews.take(session.id, str(row["id"]), (ct, pid, tid), inb)
        if shown is not None:
            pm = await edit_into_preview(adapter, pid, tid, shown, msg)
    if pm is None:
        pm = await adapter.deliver(pid, tid, msg)
    d.sessions.answered(session.id, row["in_reply_to"], answers)
    if note is not None:  # sent without them: the agent hears which and why
        d.tell_agent(session, note, now)
    if isinstance(content, dict) and content.get("replyCode"):
        from carapace.permissions.questions import question_delivered

        question_delivered(d.db, str(content.get("questionId")), pm, now)
    if named_files:  # (a row that named none has no folder of files to clear: issue 19,
        # two link-free opens and a removal per reply)
        await asyncio.to_thread(clear_outbox, paths, row["id"])
    return pm


def answers_of(value: object) -> tuple[str, ...]:
    """``content["answers"]`` (agent-written): at most 100 bounded strings, else nothing."""
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value[:100] if isinstance(v, str) and 0 < len(v) <= 1024)
