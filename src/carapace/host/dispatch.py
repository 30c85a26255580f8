"""Where one outbound row goes (spec §4.3): a system action, another agent's session, or a
channel adapter (an edit, a reaction, a question with buttons, files from the outbox, a
reply shown as it was written). Delivery (host/delivery.py) decides *when* a row is sent
and records the outcome; :func:`send_row` is the send itself."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING

from carapace.channels.base import OutboundFile, OutboundMessage
from carapace.db.destinations import channel_refusal
from carapace.db.session import SessionPaths
from carapace.db.sessions import Session
from carapace.errors import DeliveryError
from carapace.host.actions import route_agent_message
from carapace.host.delivery_log import delivery_key
from carapace.host.outbox_files import clear_outbox, read_outbox_files
from carapace.host.outbox_reader import MAX_CONTENT_BYTES, OutRow
from carapace.host.preview import edit_into_preview
from carapace.jsonutil import loads_or

if TYPE_CHECKING:
    from carapace.host.delivery import Delivery


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
        raise DeliveryError(f"outbound content over {MAX_CONTENT_BYTES} bytes", permanent=True)
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
    refusal = channel_refusal(d.db, session.agent_group_id, session.messaging_group_id, ct, pid)
    if refusal is not None:
        raise DeliveryError(refusal, permanent=True)
    adapter = d.adapters.get(ct)
    if adapter is None:
        raise DeliveryError(f"no channel adapter for {ct!r}")
    if isinstance(content, dict):
        op = content.get("operation")
        if op == "edit" and hasattr(adapter, "edit"):
            text = content.get("text") or content.get("markdown") or ""
            await adapter.edit(pid, tid, str(content.get("messageId")), str(text))
            return None
        if op == "reaction" and hasattr(adapter, "react"):
            await adapter.react(pid, tid, str(content.get("messageId")), str(content.get("emoji")))
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
    if isinstance(content, dict) and isinstance(content.get("files"), list) and content["files"]:
        read = read_outbox_files(paths, row["id"], content["files"])
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
    if note is not None:  # sent without them: the agent hears which and why
        d.tell_agent(session, note, now)
    if isinstance(content, dict) and content.get("replyCode"):
        from carapace.permissions.questions import question_delivered

        question_delivered(d.db, str(content.get("questionId")), pm, now)
    clear_outbox(paths, row["id"])
    return pm


def answers_of(value: object) -> tuple[str, ...]:
    """``content["answers"]`` (agent-written): at most 100 bounded strings, else nothing."""
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value[:100] if isinstance(v, str) and 0 < len(v) <= 1024)
