"""The dashboard (owner and global admins): agent groups, sessions, a session's messages,
approvals, scheduled tasks, dropped senders, usage, host health.

Reads are plain queries on the host's connection (paginated); every action is the matching
``carapace admin`` verb run through the admin dispatcher (``admin/dispatch.py``, the same
code path as the terminal and the admin socket), except card decisions, which go through
the approvals entry point (``handle_action``) as the clicking user.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from carapace.admin.dispatch import HOST_CALLER
from carapace.db import groups
from carapace.db.session import SessionPaths
from carapace.permissions.cards import get_card
from carapace.timefmt import new_id
from carapace.web import session_view
from carapace.web.html import bar_chart, esc, pager, post_button, table, when

if TYPE_CHECKING:
    from carapace.web.app import Req, WebApp, WebUser

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
LOG_LINES = 200


class RingHandler(logging.Handler):
    """The host's last log lines, for the health page."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[tuple[str, str]] = deque(maxlen=LOG_LINES)
        self.errors = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.levelname, self.format(record)[:2000]))
            if record.levelno >= logging.ERROR:
                self.errors += 1
        except Exception:  # a log handler must never raise
            pass


def routes(app: WebApp) -> list[Route]:
    d = Dashboard(app)
    app.closers.append(lambda: logging.getLogger("carapace").removeHandler(d.ring))
    e = app.endpoint
    op = {"operator": True}
    return [
        Route("/", e(d.overview), methods=["GET"]),
        Route("/sessions", e(d.sessions, **op), methods=["GET"]),
        Route("/sessions/{id}", e(d.session, **op), methods=["GET"]),
        Route("/approvals", e(d.approvals, **op), methods=["GET"]),
        Route("/approvals/{id}/decide", e(d.decide, **op), methods=["POST"]),
        Route("/tasks", e(d.tasks, **op), methods=["GET"]),
        Route("/tasks/create", e(d.task_create, **op), methods=["POST"]),
        Route("/tasks/{id}", e(d.task, **op), methods=["GET"]),
        Route("/tasks/{id}/{op}", e(d.task_op, **op), methods=["POST"]),
        Route("/dropped", e(d.dropped, **op), methods=["GET"]),
        Route("/dropped/clear", e(d.dropped_clear, **op), methods=["POST"]),
        Route("/usage", e(d.usage, **op), methods=["GET"]),
        Route("/health", e(d.health, **op), methods=["GET"]),
        Route("/api/health", e(d.health_json, **op), methods=["GET"]),
    ]


def _page_no(req: Req) -> int:
    raw = req.query.get("page", "1")
    return max(1, min(int(raw), 100_000)) if raw.isdigit() else 1


def _day(raw: str) -> str:
    """``YYYY-MM-DD`` or ''."""
    ok = len(raw) == 10 and raw[4] == raw[7] == "-" and raw.replace("-", "").isdigit()
    return raw if ok else ""


class Dashboard:
    def __init__(self, app: WebApp) -> None:
        self.app = app
        self.ring = RingHandler()
        logging.getLogger("carapace").addHandler(self.ring)

    @property
    def db(self) -> Any:
        return self.app.host.db

    async def admin(self, user: WebUser, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run one ``carapace admin`` verb through the dispatcher, as the operator."""
        from carapace.host.admin_server import dispatch_in_thread

        frame = {"id": new_id("web"), "command": command, "args": args}
        loop = asyncio.get_running_loop()
        resp: dict[str, Any] = await asyncio.to_thread(
            dispatch_in_thread, self.app.host, loop, frame, HOST_CALLER
        )
        if command.split("-")[-1] not in ("list", "get", "report"):
            logger.info("web user %s ran admin %s %s: %s", user.id, command, args,
                        "ok" if resp.get("ok") else resp.get("error"))  # fmt: skip
        return resp

    def flash(self, req: Req) -> str:
        msg, err = req.query.get("done"), req.query.get("error")
        if err:
            return f'<p class="error" role="alert">{esc(err)}</p>'
        return f'<p class="ok" role="status">{esc(msg)}</p>' if msg else ""

    # -- overview: agent groups -------------------------------------------------------------------
    async def overview(self, req: Req, user: WebUser) -> Response:
        if not user.operator:
            return RedirectResponse("/chat", status_code=303)
        pool = self.app.host.pool
        rows = []
        for g in groups.list_agent_groups(self.db):
            stats = self.db.execute(
                "SELECT COUNT(*), SUM(status='active'), MAX(last_active) FROM sessions "
                "WHERE agent_group_id=?",
                (g.id,),
            ).fetchone()
            running = sum(1 for sid in pool.running if self._group_of(sid) == g.id)
            rows.append([
                f'<a href="/sessions?group={esc(quote(g.id))}">{esc(g.name)}</a>', esc(g.folder),
                esc(stats[1] or 0), esc(running), when(stats[2]),
                f'<a href="/chat/{esc(quote(g.id))}">chat</a>',
            ])  # fmt: skip
        pending = self.db.execute(
            "SELECT COUNT(*) FROM carapace_cards WHERE status='pending'"
        ).fetchone()[0]
        body = (
            f'<p class="stats"><span>{esc(len(pool.running))} runner(s) running</span> '
            f"<span>{len(pool.queued())} session(s) queued</span> "
            f'<span><a href="/approvals">{esc(pending)} pending decision(s)</a></span></p>'
            + table(["Agent group", "Folder", "Active sessions", "Runners", "Last activity", ""],
                    rows, caption="Agent groups")
        )  # fmt: skip
        return self.app.render("Overview", body, user, "/")

    def _group_of(self, sid: str) -> str | None:
        row = self.db.execute("SELECT agent_group_id FROM sessions WHERE id=?", (sid,)).fetchone()
        return str(row[0]) if row else None

    # -- sessions ---------------------------------------------------------------------------------
    async def sessions(self, req: Req, user: WebUser) -> Response:
        n = _page_no(req)
        group = req.query.get("group") or None
        status = (
            req.query.get("status") if req.query.get("status") in ("active", "closed") else None
        )
        day = _day(req.query.get("day", ""))
        where, args = [], []
        if day:  # active that day: created on or before it, last active on or after it
            where.append("substr(s.created_at, 1, 10) <= ? AND "
                         "substr(COALESCE(s.last_active, s.created_at), 1, 10) >= ?")  # fmt: skip
            args += [day, day]
        if group:
            where.append("s.agent_group_id=?")
            args.append(group)
        if status:
            where.append("s.status=?")
            args.append(status)
        sql = ("SELECT s.id, s.agent_group_id, g.name, s.status, s.container_status, "
               "s.last_active, s.created_at, mg.channel_type, mg.platform_id, mg.name, w.next_due "
               "FROM sessions s LEFT JOIN agent_groups g ON g.id=s.agent_group_id "
               "LEFT JOIN messaging_groups mg ON mg.id=s.messaging_group_id "
               "LEFT JOIN carapace_session_work w ON w.session_id=s.id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY COALESCE(s.last_active, s.created_at) DESC, s.id LIMIT ? OFFSET ?")  # fmt: skip
        found = self.db.execute(sql, (*args, PAGE_SIZE + 1, (n - 1) * PAGE_SIZE)).fetchall()
        running = self.app.host.pool
        queues = await asyncio.to_thread(
            queue_lengths, self.app.host.home.data_dir, [(r[0], r[1]) for r in found[:PAGE_SIZE]]
        )
        rows = [[
            f'<a href="/sessions/{esc(quote(r[0]))}">{esc(r[0])}</a>', esc(r[2] or r[1]),
            esc(f"{r[7]}/{r[9] or r[8]}" if r[7] else "—"), esc(r[3]),
            "running" if running.is_running(r[0]) else esc(r[4] or "stopped"),
            when(r[5] or r[6]), esc("?" if queues[r[0]] is None else queues[r[0]]), when(r[10]),
        ] for r in found[:PAGE_SIZE]]  # fmt: skip
        opts = "".join(
            f'<option value="{esc(g.id)}"{" selected" if g.id == group else ""}>{esc(g.name)}</option>'
            for g in groups.list_agent_groups(self.db)
        )
        form = (f'<form method="get" class="filters"><label>Agent group <select name="group">'
                f'<option value="">all</option>{opts}</select></label> <label>Status '
                f'<select name="status"><option value="">any</option><option'
                f'{" selected" if status == "active" else ""}>active</option><option'
                f'{" selected" if status == "closed" else ""}>closed</option></select></label> '
                f'<label>Active on <input type="date" name="day" value="{esc(day)}"></label> '
                '<button type="submit">Filter</button></form>')  # fmt: skip
        body = (form + table(["Session", "Agent", "Chat", "Status", "Runner", "Last activity",
                              "Queue", "Next due"], rows, caption="Sessions, most recent first")
                + pager("/sessions", {"group": group, "status": status, "day": day}, n,
                        len(found) > PAGE_SIZE))  # fmt: skip
        return self.app.render("Sessions", body, user, "/sessions")

    async def session(self, req: Req, user: WebUser) -> Response:
        body = await session_view.render(self.app, req.params["id"], _page_no(req))
        if body is None:
            from carapace.web.app import refusal

            return refusal(req, 404, "no such session")
        return self.app.render(f"Session {req.params['id']}", body, user, "/sessions")

    # -- approvals --------------------------------------------------------------------------------
    async def approvals(self, req: Req, user: WebUser) -> Response:
        resp = await self.admin(user, "approvals-list", {})
        items = []
        for d in resp.get("data") or []:
            card = get_card(self.db, d["id"])
            buttons = "".join(
                post_button(f"/approvals/{quote(d['id'])}/decide", o.get("label", "?"), user.csrf,
                            {"index": str(i)}, cls="primary" if i == 0 else "")
                for i, o in enumerate(card.options if card else [])
            )  # fmt: skip
            items.append(
                f'<li class="card"><h2>{esc(d.get("title") or d["kind"])}</h2>'
                f'<p class="muted">{esc(d["kind"])} · {esc(d.get("action"))} · code '
                f"{esc(d.get('code'))} · expires {esc(d.get('expires_at') or '—')}</p>"
                f'<p class="question">{esc(d.get("question"))}</p>'
                f'<div class="buttons">{buttons or "(no options)"}</div></li>'
            )
        body = self.flash(req) + (f'<ul class="cards">{"".join(items)}</ul>' if items else
                                  '<p class="empty">No pending decisions.</p>')  # fmt: skip
        return self.app.render("Approvals", body, user, "/approvals")

    async def decide(self, req: Req, user: WebUser) -> Response:
        from carapace.web.routes_chat import decide

        index = req.form().get("index", "")
        outcome = decide(self.app, req.params["id"], index, user, None)
        key = "done" if outcome.get("status") in ("approved", "rejected", "answered") else "error"
        text = outcome.get("message") or outcome.get("status") or ""
        return RedirectResponse(f"/approvals?{key}={quote(str(text))}", status_code=303)

    # -- tasks --------------------------------------------------------------------------------------
    async def tasks(self, req: Req, user: WebUser) -> Response:
        resp = await self.admin(user, "tasks-list", {})
        rows = []
        for t in resp.get("data") or []:
            ops = [o for o in ("pause", "resume", "cancel")
                   if (o == "pause" and t["status"] == "pending")
                   or (o == "resume" and t["status"] == "paused")
                   or (o == "cancel" and t["status"] in ("pending", "paused"))]  # fmt: skip
            buttons = " ".join(post_button(f"/tasks/{quote(t['id'])}/{o}", o.capitalize(),
                                           user.csrf) for o in ops)  # fmt: skip
            link = f'<a href="/tasks/{esc(quote(t["id"]))}">{esc(t["id"])}</a>'
            rows.append([link, esc(self._gname(t["agent_group_id"])), esc(t["prompt"][:300]),
                         esc(t.get("recurrence") or "once"), esc(t.get("next_run") or "—"),
                         esc(t.get("timezone")), esc(t["status"]), buttons])  # fmt: skip
        gopts = "".join(f'<option value="{esc(g.folder)}">{esc(g.name)}</option>'
                        for g in groups.list_agent_groups(self.db))  # fmt: skip
        create = (
            '<details><summary>New task</summary><form method="post" action="/tasks/create" '
            f'class="stack"><input type="hidden" name="csrf" value="{esc(user.csrf)}">'
            f'<label>Agent group <select name="group" required>{gopts}</select></label>'
            '<label>Prompt <textarea name="prompt" required rows="3"></textarea></label>'
            '<label>Cron (repeat) <input name="cron" placeholder="0 9 * * 1-5"></label>'
            '<label>Or once at <input name="at" placeholder="2026-12-24T09:00"></label>'
            '<label>Time zone <input name="tz" placeholder="Europe/Berlin"></label>'
            '<button type="submit">Create</button></form></details>'
        )  # fmt: skip
        body = self.flash(req) + create + table(
            ["Task", "Agent", "Prompt", "Repeats", "Next run (its zone)", "Zone", "Status", ""],
            rows, caption="Scheduled tasks")  # fmt: skip
        return self.app.render("Tasks", body, user, "/tasks")

    async def task(self, req: Req, user: WebUser) -> Response:
        resp = await self.admin(user, "tasks-get", {"id": req.params["id"]})
        t = resp.get("data")
        if not resp.get("ok") or not isinstance(t, dict):
            from carapace.web.app import refusal

            return refusal(req, 404, "no such task")
        facts = table(["", ""], [[esc(k.replace("_", " ").capitalize()), esc(t.get(k))] for k in (
            "prompt", "agent_group_id", "status", "recurrence", "timezone", "catch_up",
            "next_run", "occurrences", "session_id")], caption="Task")  # fmt: skip
        hist = table(["Scheduled for", "Ran at", "Outcome", "Detail"],
                     [[esc(h.get("scheduled_for")), esc(h.get("run_at")), esc(h.get("outcome")),
                       esc(h.get("detail"))] for h in reversed(t.get("history") or [])],
                     caption="History (newest first)", empty="No runs yet.")  # fmt: skip
        return self.app.render(f"Task {t['id']}", facts + hist, user, "/tasks")

    def _gname(self, ag: str) -> str:
        g = groups.get_agent_group(self.db, ag)
        return g.name if g else ag

    async def task_op(self, req: Req, user: WebUser) -> Response:
        op = req.params["op"]
        if op not in ("pause", "resume", "cancel"):
            from carapace.web.app import refusal

            return refusal(req, 404, "no such task action")
        resp = await self.admin(user, f"tasks-{op}", {"id": req.params["id"]})
        return self._after(resp, f"task {req.params['id']}: {op}")

    async def task_create(self, req: Req, user: WebUser) -> Response:
        f = req.form()
        args = {
            k: f[k].strip() for k in ("group", "prompt", "cron", "at", "tz") if f.get(k, "").strip()
        }
        resp = await self.admin(user, "tasks-create", args)
        return self._after(resp, "task created")

    def _after(self, resp: dict[str, Any], done: str) -> Response:
        if resp.get("ok"):
            return RedirectResponse(f"/tasks?done={quote(done)}", status_code=303)
        err = resp.get("error") or {}
        return RedirectResponse(f"/tasks?error={quote(str(err.get('message') or err))}",
                                status_code=303)  # fmt: skip

    # -- dropped, usage, health ------------------------------------------------------------------------
    async def dropped(self, req: Req, user: WebUser) -> Response:
        resp = await self.admin(user, "dropped-messages-list", {})
        rows = [[esc(d.get("channel_type")), esc(d.get("platform_id")), esc(d.get("sender_name") or d.get("user_id")),
                 esc(d.get("reason") or d.get("last_reason")), esc(d.get("count") or d.get("message_count")),
                 esc(d.get("last_seen") or d.get("updated_at")),
                 post_button("/dropped/clear", "Clear", user.csrf,
                             {"channel_type": str(d.get("channel_type") or ""),
                              "platform_id": str(d.get("platform_id") or "")})]
                for d in resp.get("data") or []]  # fmt: skip
        body = self.flash(req) + table(
            ["Channel", "Chat", "Sender", "Reason", "Count", "Last", ""],
            rows,
            caption="Chats whose messages were dropped",
            empty="No dropped senders.",
        )
        return self.app.render("Dropped senders", body, user, "/dropped")

    async def dropped_clear(self, req: Req, user: WebUser) -> Response:
        """``carapace admin dropped-messages clear``, as the signed-in operator."""
        f = req.form()
        args = {k: f.get(k, "") for k in ("channel_type", "platform_id")}
        resp = await self.admin(user, "dropped-messages-clear", args)
        if resp.get("ok"):
            done = f"cleared {args['channel_type']}:{args['platform_id']}"
            return RedirectResponse(f"/dropped?done={quote(done)}", status_code=303)
        err = resp.get("error") or {}
        return RedirectResponse(f"/dropped?error={quote(str(err.get('message') or err))}",
                                status_code=303)  # fmt: skip

    async def usage(self, req: Req, user: WebUser) -> Response:
        since = req.query.get("since") or None
        args = {"by": "day"} | ({"since": since} if since else {})
        by_day = (await self.admin(user, "usage-report", args)).get("data") or []
        by_group = (await self.admin(user, "usage-report", {**args, "by": "group"})).get(
            "data"
        ) or []
        by_model = (await self.admin(user, "usage-report", {**args, "by": "model"})).get(
            "data"
        ) or []
        detail = (await self.admin(user, "usage-report", {**args, "by": "day,group,model"})).get(
            "data"
        ) or []
        charts = (
            bar_chart("Cost per day (USD)", [(r["period"], r["cost_usd"]) for r in by_day][-31:])
            + bar_chart("Cost per agent group (USD)", [(self._gname(r["group"]), r["cost_usd"]) for r in by_group])
            + bar_chart("Tokens per model", [(r["model"] or "?", r["input_tokens"] + r["output_tokens"]) for r in by_model])
        )  # fmt: skip
        rows = [[esc(r["period"]), esc(self._gname(r["group"])), esc(r["model"]), esc(r["calls"]),
                 esc(r["errors"]), esc(r["input_tokens"]), esc(r["output_tokens"]),
                 esc(f"{r['cost_usd']:.4f}") + (" *" if r.get("unpriced_calls") else "")]
                for r in reversed(detail)]  # fmt: skip
        form = (
            f'<form method="get" class="filters"><label>Since <input type="date" name="since" '
            f'value="{esc(since or "")}"></label> <button type="submit">Show</button></form>'
        )
        body = (form + f'<div class="charts">{charts}</div>'
                + table(["Day", "Agent group", "Model", "Calls", "Errors", "Input", "Output",
                         "Cost (USD)"], rows, caption="Usage per day, group and model",
                        empty="No model usage recorded yet.")
                + '<p class="muted">* some calls have no price in the table ([prices] in carapace.toml).</p>')  # fmt: skip
        return self.app.render("Usage", body, user, "/usage")

    def _health(self) -> dict[str, Any]:
        host = self.app.host
        return {"backend": host.backend_note, "max_runners": host.settings.max_runners,
                "running": len(host.pool.running), "queued": host.pool.queued(),
                "errors_logged": self.ring.errors,
                "channels": sorted(host.adapters),
                "log": [{"level": lv, "line": line} for lv, line in list(self.ring.lines)[-50:]]}  # fmt: skip

    async def health(self, req: Req, user: WebUser) -> Response:
        h = self._health()
        from carapace.limits import mechanism

        facts = table(["", ""], [
            ["Runner backend", esc(h["backend"])], ["Runner limits", esc(mechanism())],
            ["Max runners", esc(h["max_runners"])], ["Running", esc(h["running"])],
            ["Queued", esc(h["queued"])], ["Channels", esc(", ".join(h["channels"]))],
            ["Errors logged since start", esc(h["errors_logged"])],
        ], caption="Host")  # fmt: skip
        log = "".join(
            f'<li class="lv-{esc(x["level"].lower())}">{esc(x["line"])}</li>' for x in h["log"]
        )
        body = facts + (f'<h2>Last log lines</h2><ol id="log-lines" class="log" data-live="/api/health">'
                        f"{log}</ol>")  # fmt: skip
        return self.app.render("Health", body, user, "/health")

    async def health_json(self, req: Req, user: WebUser) -> Response:
        return JSONResponse(self._health())


def queue_lengths(data_dir: Any, sessions: list[tuple[str, str]]) -> dict[str, int | None]:
    """Each session's queue: its ``messages_in`` rows still pending (waiting or being worked
    on); 0 for a session without a folder. Read-only, a short busy timeout, in a worker
    thread; None when the file cannot be read."""
    out: dict[str, int | None] = {}
    for sid, agent_group_id in sessions:
        path = SessionPaths.of(data_dir, agent_group_id, sid).inbound
        if not path.is_file():
            out[sid] = 0
            continue
        try:
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=0.1)
            try:
                row = conn.execute("SELECT COUNT(*) FROM messages_in WHERE status='pending'")
                out[sid] = int(row.fetchone()[0])
            finally:
                conn.close()
        except sqlite3.Error:
            out[sid] = None
    return out
