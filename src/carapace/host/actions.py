"""System actions (``kind='system'`` outbound rows, spec §4.6) and agent-to-agent routing (§4.7).

Handlers are idempotent: a retried ``schedule_task`` whose row exists is a success, and an
a2a copy has an id derived from the outbound row, so a re-delivery after a crash inserts
nothing twice. Unknown actions fail (NanoClaw marked them delivered, §11.3 item 26).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from carapace.db import groups
from carapace.db.session import SessionPaths, open_inbound
from carapace.db.sessions import Session, get_session
from carapace.errors import DeliveryError
from carapace.host.sessions import SessionManager, safe_name
from carapace.jsonutil import dumps, loads_or
from carapace.timefmt import epoch_ms, iso, parse_ts, sqlite_ts

logger = logging.getLogger(__name__)

ActionHandler = Callable[[Session, dict[str, Any], sqlite3.Connection, datetime], Awaitable[None]]
AdminCall = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


def _live_rows(inb: sqlite3.Connection, task_id: str, statuses: tuple[str, ...]) -> list[Any]:
    marks = ",".join("?" for _ in statuses)
    return inb.execute(
        f"SELECT * FROM messages_in WHERE (id=? OR series_id=?) AND kind='task' "
        f"AND status IN ({marks})",
        (task_id, task_id, *statuses),
    ).fetchall()


class SystemActions:
    def __init__(
        self,
        sessions: SessionManager,
        wake: Callable[[str], None],
        admin: AdminCall | None = None,
    ) -> None:
        self.sessions = sessions
        self.wake = wake
        self.admin = admin
        self.handlers: dict[str, ActionHandler] = {
            "schedule_task": self.schedule_task,
            "cancel_task": self.cancel_task,
            "pause_task": self.pause_task,
            "resume_task": self.resume_task,
            "update_task": self.update_task,
            "cli_request": self.cli_request,
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
        self.sessions.write_message(
            session,
            {
                "id": task_id, "kind": "task", "timestamp": sqlite_ts(now),
                "process_after": after, "recurrence": c.get("recurrence"),
                "platform_id": c.get("platformId"), "channel_type": c.get("channelType"),
                "thread_id": c.get("threadId"), "series_id": task_id,
                "content": dumps({"prompt": c.get("prompt"), "script": c.get("script")}),
            },
            now=now,
            due=iso(parse_ts(str(after))) if after else iso(now),
        )  # fmt: skip

    async def _set_status(
        self, inb: sqlite3.Connection, c: dict[str, Any], sql_set: str, statuses: tuple[str, ...]
    ) -> int:
        task_id = str(c.get("taskId") or "")
        marks = ",".join("?" for _ in statuses)
        cur = inb.execute(
            f"UPDATE messages_in SET {sql_set} WHERE (id=? OR series_id=?) AND kind='task' "
            f"AND status IN ({marks})",
            (task_id, task_id, *statuses),
        )
        return cur.rowcount

    async def cancel_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        await self._set_status(inb, c, "status='completed', recurrence=NULL", ("pending", "paused"))

    async def pause_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        await self._set_status(inb, c, "status='paused'", ("pending",))

    async def resume_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        if await self._set_status(inb, c, "status='pending'", ("paused",)):
            self.sessions.mark_work(session.id, iso(now))

    async def update_task(
        self, session: Session, c: dict[str, Any], inb: sqlite3.Connection, now: datetime
    ) -> None:
        task_id = str(c.get("taskId") or "")
        rows = _live_rows(inb, task_id, ("pending", "paused"))
        if not rows:
            self.sessions.notify_agent(
                session, f'update_task: no live task matched id "{task_id}".', now=now
            )
            self.wake(session.id)
            return
        for r in rows:
            content = loads_or(r["content"], {})
            content = content if isinstance(content, dict) else {}
            for key in ("prompt", "script"):
                if key in c:
                    content[key] = c[key]
            sets, args = ["content=?"], [dumps(content)]
            if "processAfter" in c:
                sets.append("process_after=?")
                args.append(c["processAfter"])
            if "recurrence" in c:
                sets.append("recurrence=?")
                args.append(c["recurrence"])
            inb.execute(f"UPDATE messages_in SET {', '.join(sets)} WHERE id=?", (*args, r["id"]))
        self.sessions.mark_work(session.id, iso(now))

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
    row: sqlite3.Row,
    inb: sqlite3.Connection,
    wake: Callable[[str], None],
    now: datetime,
) -> Session:
    """Spec §4.7: ACL, target session with return path, files, write + wake."""
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
    candidate: str | None = None
    if row["in_reply_to"]:
        r = inb.execute(
            "SELECT source_session_id FROM messages_in WHERE id=?", (row["in_reply_to"],)
        ).fetchone()
        candidate = r[0] if r else None
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
    if target_session is None:
        target_session, _ = sessions.resolve(target, None, None, "agent-shared", now=now)
    mid = a2a_id(row["id"], now if not row["timestamp"] else parse_ts(row["timestamp"]))
    content = loads_or(row["content"], {})
    content = content if isinstance(content, dict) else {"text": str(content)}
    files = content.get("files")
    if isinstance(files, list) and files:
        src = sessions.paths(session).outbox / row["id"]
        dst_paths = sessions.paths(target_session)
        dst = dst_paths.inbox / mid
        atts = content.setdefault("attachments", [])
        for name in files:
            if not isinstance(name, str) or not safe_name(name):
                continue
            f = src / name
            if f.is_symlink() or not f.is_file() or src.is_symlink():
                continue
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst / name)
            atts.append({"name": name, "filename": name, "type": "file",
                         "localPath": f"inbox/{mid}/{name}"})  # fmt: skip
    sessions.write_message(
        target_session,
        {
            "id": mid, "kind": "chat", "timestamp": iso(now),
            "platform_id": session.agent_group_id, "channel_type": "agent", "thread_id": None,
            "content": dumps(content), "source_session_id": session.id,
        },
        now=now,
    )  # fmt: skip
    logger.info("a2a %s from session %s to session %s", mid, session.id, target_session.id)
    wake(target_session.id)
    return target_session


def open_session_inbound(paths: SessionPaths) -> sqlite3.Connection:
    return open_inbound(paths)
