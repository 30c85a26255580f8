"""System actions (``kind='system'`` outbound rows, spec §4.6) and agent-to-agent routing (§4.7).

Handlers are idempotent: a retried ``schedule_task`` whose row exists is a success, and an
a2a copy has an id derived from the outbound row, so a re-delivery after a crash inserts
nothing twice. Unknown actions fail (NanoClaw marked them delivered, §11.3 item 26).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from carapace.db import groups
from carapace.db.session import SessionPaths, open_inbound
from carapace.db.sessions import Session, get_session
from carapace.errors import DeliveryError, ValidationError
from carapace.host.a2a_guard import HOPS_FIELD, A2AGuard, hops_of
from carapace.host.outbox_files import copy_to_inbox, row_folder
from carapace.host.outbox_reader import OutRow
from carapace.host.sessions import SessionManager
from carapace.jsonutil import dumps, loads_or
from carapace.sched import series
from carapace.timefmt import epoch_ms, iso, parse_ts, sqlite_ts

logger = logging.getLogger(__name__)

T = TypeVar("T")

ActionHandler = Callable[[Session, dict[str, Any], sqlite3.Connection, datetime], Awaitable[None]]
AdminCall = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


class SystemActions:
    def __init__(
        self,
        sessions: SessionManager,
        wake: Callable[[str], None],
        admin: AdminCall | None = None,
        timezone: str = "UTC",
    ) -> None:
        self.sessions = sessions
        self.wake = wake
        self.admin = admin
        self.timezone = timezone  # the default zone of a task without its own
        self.handlers: dict[str, ActionHandler] = {
            "schedule_task": self.schedule_task,
            "cancel_task": self.cancel_task,
            "pause_task": self.pause_task,
            "resume_task": self.resume_task,
            "update_task": self.update_task,
            "task_script_result": self.task_script_result,
            "cli_request": self.cli_request,
            "unknown_destination": self.unknown_destination,
        }

    def register(self, action: str, handler: ActionHandler) -> None:
        self.handlers[action] = handler

    async def handle(
        self, session: Session, content: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        action = content.get("action")
        handler = self.handlers.get(str(action))
        if handler is None:
            raise DeliveryError(f"unknown system action {action!r}", permanent=True)
        await handler(session, content, inb, now)

    async def schedule_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        task_id = c.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            raise DeliveryError("schedule_task without taskId", permanent=True)
        after = c.get("processAfter")
        if after is not None:
            try:
                parse_ts(str(after))
            except ValueError:
                raise DeliveryError(f"schedule_task: bad processAfter {after!r}", permanent=True)
        try:
            content = series.task_content_from_action(c)
        except ValidationError as exc:
            self._note(session, f"schedule_task {task_id}: {exc}", now)
            return
        self.sessions.write_message(
            session,
            {
                "id": task_id, "kind": "task", "timestamp": sqlite_ts(now),
                "process_after": after, "recurrence": c.get("recurrence") or None,
                "platform_id": c.get("platformId"), "channel_type": c.get("channelType"),
                "thread_id": c.get("threadId"), "series_id": task_id,
                "content": content.to_json(),
            },
            now=now,
            due=iso(parse_ts(str(after))) if after else iso(now),
        )  # fmt: skip

    async def unknown_destination(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        """The runner dropped a ``<message to="…">`` block naming no destination: say so."""
        name = _plain(c.get("to"))
        known = c.get("known")
        names = [_plain(k) for k in known[:50]] if isinstance(known, list) else []
        self._note(session, f'Your <message to="{name}"> was not delivered: you have no '
                   f'destination named "{name}". Known destinations: '
                   f"{', '.join(names) or '(none)'}.", now)  # fmt: skip

    async def _on_file(self, session: Session, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the session's ``inbound.db``, on its writer thread: the agent may keep
        that file locked, and the event loop never waits for it (the writer sets the job
        aside and serves other sessions meanwhile)."""
        return await self.sessions.writers.call(session.id, self.sessions.paths(session), fn)

    def _note(self, session: Session, text: str, now: datetime) -> None:
        self.sessions.notify_agent(session, text, now=now)
        self.wake(session.id)

    def _no_match(self, session: Session, action: str, c: dict[str, Any], now: datetime) -> None:
        self._note(session, f'{action}: no live task matched id "{c.get("taskId") or ""}".', now)

    async def cancel_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        task_id = str(c.get("taskId") or "")
        if not await self._on_file(session, lambda f: series.cancel_series(f, task_id, now=now)):
            self._no_match(session, "cancel_task", c, now)

    async def pause_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        task_id = str(c.get("taskId") or "")
        if not await self._on_file(session, lambda f: series.pause_series(f, task_id, now=now)):
            self._no_match(session, "pause_task", c, now)

    async def resume_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        task_id = str(c.get("taskId") or "")
        tz = self.timezone
        if await self._on_file(
            session, lambda f: series.resume_series(f, task_id, now=now, default_tz=tz)
        ):
            self.sessions.work.mark(session.id, iso(now))
        else:
            self._no_match(session, "resume_task", c, now)

    async def update_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        task_id = str(c.get("taskId") or "")
        try:
            fields = series.update_fields_from_action(c)
        except ValidationError as exc:
            self._note(session, f"update_task {task_id}: {exc}", now)
            return
        if not await self._on_file(
            session, lambda f: series.update_series(f, task_id, fields, now=now)
        ):
            self._no_match(session, "update_task", c, now)
            return
        self.sessions.work.mark(session.id, iso(now))

    async def task_script_result(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        """The runner ran a task's pre-task script (runner.md §11.3): record its outcome."""
        from carapace.host.task_runs import record_script_result

        record_script_result(self.sessions.db, session, c, inb, now)

    async def cli_request(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        request_id, command = c.get("requestId"), c.get("command")
        if not request_id or not command:
            logger.warning("cli_request without requestId/command in session %s", session.id)
            return
        frame = {"id": request_id, "command": command, "args": c.get("args") or {}}
        caller = {
            "caller": "agent", "sessionId": session.id, "agentGroupId": session.agent_group_id,
            "messagingGroupId": session.messaging_group_id or "",
        }  # fmt: skip
        if self.admin is None:
            response: dict[str, Any] = {
                "id": request_id, "ok": False,
                "error": {"code": "unknown-command", "message": "admin commands unavailable"},
            }  # fmt: skip
        else:
            response = await self.admin(frame, caller)
        self.sessions.write_message(
            session,
            {
                "id": f"cli-resp-{request_id}", "kind": "system", "timestamp": iso(now),
                "trigger": 0,
                "content": dumps({"type": "cli_response", "requestId": request_id,
                                  "frame": response}),
            },
            now=now,
        )  # fmt: skip


def a2a_id(row_id: str, when: datetime) -> str:
    """``a2a-<ms>-<6 chars>``, derived from the outbound row so a retry is idempotent."""
    digest = hashlib.sha1(row_id.encode()).hexdigest()[:6]
    return f"a2a-{epoch_ms(when)}-{digest}"


async def route_agent_message(
    db: sqlite3.Connection,
    sessions: SessionManager,
    session: Session,
    row: OutRow,
    inb: sqlite3.Connection,
    wake: Callable[[str], None],
    now: datetime,
    guard: A2AGuard | None = None,
) -> Session:
    """Spec §4.7: ACL, loop guard (``a2a_guard``), target session with return path, files,
    write + wake."""
    target = row["platform_id"]
    if not target:
        raise DeliveryError("agent message without a target", permanent=True)
    if target != session.agent_group_id:
        ok = db.execute(
            "SELECT 1 FROM agent_destinations WHERE agent_group_id=? AND target_type='agent' "
            "AND target_id=?",
            (session.agent_group_id, target),
        ).fetchone()
        if ok is None:
            raise DeliveryError(f"unauthorized agent destination {target}", permanent=True)
    if groups.get_agent_group(db, target) is None:
        raise DeliveryError(f"target agent group {target} not found", permanent=True)
    early = loads_or(row["content"], {})
    if isinstance(early, dict) and isinstance(early.get("files"), list) and early["files"]:
        row_folder(row["id"])  # a row id that is no plain name is refused before any effect
    candidate: str | None = None
    parent: sqlite3.Row | None = None
    if row["in_reply_to"]:
        parent = inb.execute(
            "SELECT source_session_id, channel_type, content FROM messages_in WHERE id=?",
            (row["in_reply_to"],),
        ).fetchone()
        candidate = parent[0] if parent else None
    hops = hops_of(parent) + 1
    if guard is not None:
        guard.check(session.id, hops, now)
    if candidate is None:
        r = inb.execute(
            "SELECT source_session_id FROM messages_in WHERE channel_type='agent' AND "
            "platform_id=? AND source_session_id IS NOT NULL ORDER BY seq DESC LIMIT 1",
            (target,),
        ).fetchone()
        candidate = r[0] if r else None
    target_session: Session | None = None
    if candidate is not None:
        s = get_session(db, candidate)
        if s is not None and s.agent_group_id == target and (s.status or "active") == "active":
            target_session = s
    if target_session is None:  # (a new one's folder and DBs are made off the loop)
        target_session, _ = await sessions.resolve_async(target, None, None, "agent-shared",
                                                         now=now, memo=False)  # fmt: skip
    mid = a2a_id(row["id"], now if not row["timestamp"] else parse_ts(row["timestamp"]))
    content = loads_or(row["content"], {})
    content = content if isinstance(content, dict) else {"text": str(content)}
    content[HOPS_FIELD] = hops  # the host's count; an agent's own value is overwritten
    files = content.get("files")
    if isinstance(files, list) and files:
        atts, read = await asyncio.to_thread(copy_to_inbox, sessions.paths(session), row["id"],
                                             files, sessions.paths(target_session), mid)  # fmt: skip
        content.setdefault("attachments", []).extend(atts)
        if (note := read.note(f"(seq {row['seq']}) to another agent")) is not None:
            sessions.notify_agent(session, note, now=now)
            wake(session.id)
    sessions.write_message(
        target_session,
        {
            "id": mid, "kind": "chat", "timestamp": iso(now),
            "platform_id": session.agent_group_id, "channel_type": "agent", "thread_id": None,
            "content": dumps(content), "source_session_id": session.id,
        },
        now=now,
    )  # fmt: skip
    if guard is not None:
        guard.record(session.id, now)
    logger.info("a2a %s from session %s to session %s (hop %d)", mid, session.id,
                target_session.id, hops)  # fmt: skip
    wake(target_session.id)
    return target_session


def open_session_inbound(paths: SessionPaths) -> sqlite3.Connection:
    return open_inbound(paths)


def _plain(value: object, limit: int = 100) -> str:
    """An agent-written name on one line, bounded (it lands in a note to that agent)."""
    return " ".join(str(value or "").split())[:limit]
