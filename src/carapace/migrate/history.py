"""v1 ``scheduled_tasks``, ``task_run_logs``, ``messages`` and the rest (spec/v1-migration.md
§3.8, §3.10): tasks become ``kind='task'`` rows in the (agent, chat) session, run logs become
``carapace_task_runs``, chat history goes to the ``carapace_v1_messages`` archive."""

from __future__ import annotations

import sqlite3
from collections import Counter

from carapace.db import groups, messaging, users
from carapace.db.session import insert_message_in, open_inbound
from carapace.db.sessions import mark_session_work
from carapace.host.outbox_reader import read_max_seq
from carapace.jsonutil import dumps
from carapace.migrate.context import ImportContext
from carapace.migrate.mapping import JidError, map_jid, map_schedule
from carapace.migrate.report import Outcome
from carapace.migrate.v1source import V1Task
from carapace.timefmt import iso, sqlite_ts

T = "scheduled_tasks"


def import_tasks(ctx: ImportContext) -> dict[str, tuple[str, str]]:
    """Returns task id → (agent group id, session id) for the run-log import."""
    out: dict[str, tuple[str, str]] = {}
    for t in ctx.src.tasks():
        seen, prev = ctx.ledger(T, t.id, "task")
        if seen:
            ag_sid = (prev or "").split("/")
            if len(ag_sid) == 3:
                out[t.id] = (ag_sid[0], ag_sid[1])
            ctx.report.add(T, t.id, "reused", prev, "imported by an earlier run; left as is")
            continue
        _import_task(ctx, t, out)
    return out


def _skip(ctx: ImportContext, t: V1Task, why: str) -> None:
    ctx.report.add(T, t.id, "skipped", detail=f"{why} ({t.status or 'active'})")
    ctx.report.need(
        f"task {t.id}",
        f"not imported: {why}; it was {t.schedule_type} {t.schedule_value!r}: {t.prompt[:80]!r}",
        "re-create it in carapace if you still want it",
    )


def _import_task(ctx: ImportContext, t: V1Task, out: dict[str, tuple[str, str]]) -> None:
    ag_id = ctx.folders.get(t.group_folder)
    if ag_id is None:
        ag = groups.get_agent_group_by_folder(ctx.conn, t.group_folder)
        ag_id = ag.id if ag is not None else None
    if ag_id is None:
        _skip(ctx, t, f"no agent group for folder {t.group_folder!r}")
        return
    try:
        chat = map_jid(t.chat_jid)
    except JidError as exc:
        _skip(ctx, t, str(exc))
        return
    mg = messaging.get_messaging_group_by_platform(ctx.conn, chat.channel_type, chat.platform_id)
    if mg is None:
        _skip(ctx, t, f"its chat {t.chat_jid} is not a registered group")
        return
    sched = map_schedule(
        t.schedule_type, t.schedule_value, t.next_run, t.status, t.last_run,
        v1_tz=ctx.v1_timezone, tz=ctx.timezone, now=ctx.now,
    )  # fmt: skip
    notes = list(sched.notes)
    if messaging.get_wiring_for(ctx.conn, mg.id, ag_id) is None:
        notes.append("its chat is not wired to this agent group; it runs in their session")
    if t.context_mode == "isolated" and sched.status != "completed":
        notes.append("v1 ran it in a fresh conversation; it now runs in the chat's session")
    sid, _ = ctx.session_for(ag_id, mg.id, chat)
    content = {
        "prompt": t.prompt,
        "script": t.script or None,
        "migrated_from_v1": {
            "original_id": t.id, "context_mode": t.context_mode,
            "schedule_type": t.schedule_type, "schedule_value": t.schedule_value,
            "status": t.status, "created_at": t.created_at, "last_run": t.last_run,
            "last_result": t.last_result,
        },
    }  # fmt: skip
    row = {
        "id": t.id, "kind": "task", "timestamp": sqlite_ts(ctx.now), "status": sched.status,
        "process_after": sched.process_after, "recurrence": sched.recurrence,
        "series_id": t.id, "tries": 0, "trigger": 1, "platform_id": mg.platform_id,
        "channel_type": mg.channel_type, "thread_id": None, "content": dumps(content),
        "on_wake": 0,
    }  # fmt: skip
    paths = ctx.paths(ag_id, sid)
    conn = open_inbound(paths)
    try:
        clash = conn.execute("SELECT kind FROM messages_in WHERE id=?", (t.id,)).fetchone()
        if clash is not None and clash[0] != "task":
            ctx.report.add(T, t.id, "failed", detail=f"session {sid} has a {clash[0]} row {t.id}")
            ctx.report.need(f"task {t.id}", "its id is taken in the session", "re-create it")
            return
        if clash is None:
            other = read_max_seq(paths.outbound)
            insert_message_in(conn, row, other_max=other)
    finally:
        conn.close()
    ctx.record(T, t.id, "task", f"{ag_id}/{sid}/{t.id}")
    out[t.id] = (ag_id, sid)
    if sched.status == "pending":
        mark_session_work(ctx.conn, sid, sched.process_after)
    target = f"messages_in {t.id} in session {sid} ({sched.status}"
    target += f", first {sched.process_after}" if sched.status != "completed" else ""
    target += f", recurrence {sched.recurrence!r})" if sched.recurrence else ")"
    if sched.needs_person:
        ctx.report.need(f"task {t.id}", sched.needs_person + " (kept paused)", "fix and resume it")
        notes.append(sched.needs_person)
    outcome: Outcome = "imported" if (t.status or "active") == "active" else "kept"
    if sched.needs_person and outcome == "imported":
        outcome = "kept"
    ctx.report.add(T, t.id, outcome, target, "; ".join(notes))


def import_run_logs(ctx: ImportContext, tasks: dict[str, tuple[str, str]]) -> None:
    per_task: Counter[str] = Counter()
    new: Counter[str] = Counter()
    for log in ctx.src.run_logs():
        per_task[log.task_id] += 1
        ag_id, sid = tasks.get(log.task_id, (None, None))
        failed = log.status != "success"
        cur = ctx.conn.execute(
            "INSERT OR IGNORE INTO carapace_task_runs (id, series_id, agent_group_id, "
            "session_id, scheduled_for, run_at, outcome, duration_ms, detail, created_at) "
            "VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            (
                f"v1run-{log.task_id}-{log.id}", log.task_id, ag_id, sid, log.run_at,
                "failed" if failed else "ran", log.duration_ms,
                (log.error if failed else log.result), iso(ctx.now),
            ),
        )  # fmt: skip
        new[log.task_id] += cur.rowcount
    for task_id, n in per_task.items():
        where = "" if task_id in tasks else " (task itself not imported)"
        ctx.report.add(
            "task_run_logs", task_id, "imported" if new[task_id] else "reused",
            "carapace_task_runs", f"{n} run(s), {new[task_id]} new{where}",
        )  # fmt: skip


def import_messages(ctx: ImportContext) -> None:
    """Chat history → ``carapace_v1_messages`` (see docs/compat-migration.md for why not
    ``messages_in``). Idempotent by (chat_jid, id)."""
    chats: dict[str, str | None] = {}
    total: Counter[str] = Counter()
    new: Counter[str] = Counter()
    for m in ctx.src.messages():
        jid = str(m.get("chat_jid") or "")
        if jid not in chats:
            chats[jid] = _mg_for(ctx.conn, jid)
        cur = ctx.conn.execute(
            "INSERT OR IGNORE INTO carapace_v1_messages (chat_jid, id, messaging_group_id, "
            "sender, sender_name, content, timestamp, is_from_me, is_bot_message, "
            "reply_to_message_id, reply_to_message_content, reply_to_sender_name, imported_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                jid, str(m.get("id")), chats[jid], m.get("sender"), m.get("sender_name"),
                m.get("content"), m.get("timestamp"), m.get("is_from_me"),
                m.get("is_bot_message"), m.get("reply_to_message_id"),
                m.get("reply_to_message_content"), m.get("reply_to_sender_name"), iso(ctx.now),
            ),
        )  # fmt: skip
        total[jid] += 1
        new[jid] += cur.rowcount
    for jid, n in total.items():
        mg = chats[jid]
        ctx.report.add(
            "messages", jid, "archived" if new[jid] else "reused", "carapace_v1_messages",
            f"{n} message(s), {new[jid]} new" + ("" if mg else "; chat has no messaging group"),
        )  # fmt: skip


def _mg_for(conn: sqlite3.Connection, jid: str) -> str | None:
    try:
        chat = map_jid(jid)
    except JidError:
        return None
    mg = messaging.get_messaging_group_by_platform(conn, chat.channel_type, chat.platform_id)
    return mg.id if mg else None


def report_dropped(ctx: ImportContext) -> None:
    src, r = ctx.src, ctx.report
    n = len(src.chats())
    if n:
        r.add("chats", "*", "dropped", detail=(
            f"{n} chat metadata row(s): names and group flags of registered chats are on their "
            "messaging groups; carapace has no chats table"
        ))  # fmt: skip
    state = src.router_state()
    if state:
        r.add("router_state", ",".join(sorted(state)), "dropped", detail=(
            "v1 read cursors; carapace has per-session queues instead (history is archived)"
        ))  # fmt: skip
    for key in sorted(k for k in src.env if k not in ("TZ", "ASSISTANT_NAME")):
        r.add(".env", key, "skipped", detail="value not imported (credentials stay out of the DB)")
    if any(k not in ("TZ", "ASSISTANT_NAME") for k in src.env):
        r.need(".env", "v1 channel tokens and keys were not imported",
               "configure the channels you use in carapace.toml / the environment")  # fmt: skip


def import_owner(ctx: ImportContext) -> None:
    """The owner from v1's main chat when it names one person; otherwise say how to set it."""
    existing = users.owners(ctx.conn)
    if existing:
        ctx.report.add("owner", "main", "reused", f"owner {existing[0]}", "home already has one")
        return
    mains = [
        w for w in ctx.imported if w.chat is not None and w.messaging_group_id
        and any(g.folder == w.folder and g.is_main == 1 for g in ctx.src.groups())
    ]  # fmt: skip
    uid: str | None = None
    why = "no v1 main group"
    if len(mains) > 1:
        why = "several v1 main groups"
    elif mains:
        w = mains[0]
        assert w.chat is not None
        uid, why = _owner_of(ctx, w.jid, w.chat.channel_type, w.chat.platform_id, w.chat.is_group)
    if uid is None:
        ctx.report.add("owner", "main", "skipped", detail=why)
        ctx.report.need(
            "owner", f"could not tell who owns this install ({why})",
            "grant the global 'owner' role to your user id '<channel>:<your id>' "
            "(e.g. telegram:123456789) with carapace admin",
        )  # fmt: skip
        return
    w = mains[0]
    assert w.chat is not None and w.messaging_group_id is not None
    users.upsert_user(ctx.conn, uid, w.chat.channel_type, None, now=ctx.now)
    users.grant_role(ctx.conn, uid, "owner", now=ctx.now)
    if not w.chat.is_group:
        users.set_user_dm(ctx.conn, uid, w.chat.channel_type, w.messaging_group_id, now=ctx.now)
    ctx.record("owner", w.jid, "user", uid)
    ctx.report.add("owner", w.jid, "imported", f"owner {uid}", why)


def _owner_of(
    ctx: ImportContext, jid: str, channel: str, platform_id: str, is_group: bool
) -> tuple[str | None, str]:
    if not is_group and channel == "telegram":
        return platform_id, "main chat is a Telegram DM"
    if not is_group and channel == "whatsapp" and "@s.whatsapp.net" in platform_id:
        return f"whatsapp:{platform_id}", "main chat is a WhatsApp self-chat"
    senders = {
        str(m.get("sender")) for m in ctx.src.messages()
        if m.get("chat_jid") == jid and m.get("is_from_me") == 1 and m.get("sender")
    }  # fmt: skip
    if len(senders) == 1:
        sender = senders.pop()
        return users.user_id_for(channel, sender), "the only sender of own messages in main"
    return None, "main chat does not identify one person"
