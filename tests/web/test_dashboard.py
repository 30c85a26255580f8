"""Dashboard pages: sessions (paginated, 1,000 of them), a session's messages, tasks through
the admin verbs, usage, dropped senders, health."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from web_rig import WebRig, wait_for

from carapace.admin.dispatch import HOST_CALLER
from carapace.db import groups
from carapace.db.dropped import record_dropped
from carapace.db.session import SessionPaths
from carapace.db.sessions import create_session, list_sessions
from carapace.host.admin_server import dispatch_in_thread
from carapace.timefmt import iso, utcnow


def _main(rig: WebRig) -> str:
    return str(rig.on_loop(lambda: groups.get_agent_group_by_folder(rig.host.db, "main")).id)


def _admin(rig: WebRig, command: str, args: dict[str, object]) -> dict[str, object]:
    import asyncio

    async def run() -> dict[str, object]:
        frame = {"id": "t", "command": command, "args": args}
        return await asyncio.to_thread(dispatch_in_thread, rig.host, asyncio.get_running_loop(),
                                       frame, HOST_CALLER)  # fmt: skip

    return rig.call(run())


def test_tasks_create_pause_resume_cancel_are_the_admin_verbs(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    r = c.post("/tasks/create", data={"csrf": csrf, "group": "main", "prompt": "Send the sales overview",
                                      "cron": "0 9 * * 1-5", "tz": "Europe/Berlin"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and "done=" in r.headers["location"], r.headers["location"]
    tasks = _admin(rig, "tasks-list", {})["data"]
    assert isinstance(tasks, list) and len(tasks) == 1
    tid = tasks[0]["id"]
    page = c.get("/tasks").text
    assert "Send the sales overview" in page and "Europe/Berlin" in page and "Pause" in page
    assert (
        c.post(f"/tasks/{tid}/pause", data={"csrf": csrf}, follow_redirects=False).status_code
        == 303
    )
    assert _admin(rig, "tasks-get", {"id": tid})["data"]["status"] == "paused"  # type: ignore[index]
    assert "Resume" in c.get("/tasks").text
    c.post(f"/tasks/{tid}/resume", data={"csrf": csrf})
    assert _admin(rig, "tasks-get", {"id": tid})["data"]["status"] == "pending"  # type: ignore[index]
    c.post(f"/tasks/{tid}/cancel", data={"csrf": csrf})
    assert _admin(rig, "tasks-get", {"id": tid})["data"]["status"] != "pending"  # type: ignore[index]
    bad = c.post("/tasks/create", data={"csrf": csrf, "group": "main", "prompt": "x", "cron": "nope"},
                 follow_redirects=False)  # fmt: skip
    assert "error=" in bad.headers["location"]
    assert c.post("/tasks/x/explode", data={"csrf": csrf}).status_code == 404


def test_sessions_page_stays_usable_with_1000_sessions(rig: WebRig) -> None:
    main = _main(rig)
    start = utcnow() - timedelta(days=2)

    def make() -> None:
        for i in range(1000):
            create_session(rig.host.db, main, None, id=f"sess-bulk-{i:04d}",
                           now=start + timedelta(minutes=i))  # fmt: skip

    rig.on_loop(make)
    c = rig.client()
    rig.login(c)
    first = c.get("/sessions")
    assert first.status_code == 200
    assert first.text.count('href="/sessions/sess-') == 50
    assert "sess-bulk-0999" in first.text  # newest first
    assert 'rel="next"' in first.text
    last = c.get("/sessions?page=20")
    assert "sess-bulk-0000" in last.text and 'rel="next"' not in last.text
    assert c.get(f"/sessions?group={main}&status=active&page=3").status_code == 200
    overview = c.get("/").text
    assert "Agent group" in overview and ">1000<" in overview.replace(" ", "")  # active sessions
    assert "0 runner(s) running" in overview and "0 session(s) queued" in overview
    assert "<th" in first.text and ">Queue<" in first.text.replace(" ", "")


def test_a_session_page_shows_messages_delivery_and_cost(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    main = _main(rig)
    c.post(
        f"/api/chat/{main}/send", json={"text": "what did it cost"}, headers={"x-csrf-token": csrf}
    )
    wait_for(lambda: len(c.get(f"/api/history?chat=alice/{main}").json()["messages"]) >= 2,
             what="reply")  # fmt: skip
    sid = next(s.id for s in rig.on_loop(lambda: list_sessions(rig.host.db, agent_group_id=main))
               if s.messaging_group_id)  # fmt: skip
    rig.on_loop(lambda: rig.host.db.execute(
        "INSERT INTO carapace_usage (at, agent_group_id, session_id, provider, model, input_tokens,"
        " output_tokens, status) VALUES (?,?,?,?,?,?,?,200)",
        (iso(utcnow()), main, sid, "anthropic", "claude-sonnet-4-5", 1000, 500)))  # fmt: skip
    page = wait_for(lambda: (p := c.get(f"/sessions/{sid}").text) and "delivered" in p and p)
    assert "what did it cost" in page
    assert "1 model call(s), 1,500 tokens" in page
    assert c.get("/sessions/nope").status_code == 404
    usage = c.get("/usage").text
    assert "<svg" in usage and "claude-sonnet-4-5" in usage
    assert re.search(r"Cost per day", usage)


def test_dropped_and_health_pages(rig: WebRig) -> None:
    rig.on_loop(lambda: record_dropped(rig.host.db, "fake", "chat-9", "no_agent_wired",
                                       sender_name="Stranger"))  # fmt: skip
    c = rig.client()
    csrf = rig.login(c)
    assert "chat-9" in c.get("/dropped").text
    # cleared from the page: the same operation as `carapace admin dropped-messages clear`
    r = c.post("/dropped/clear", data={"csrf": "forged", "channel_type": "fake",
                                        "platform_id": "chat-9"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 403 and "chat-9" in c.get("/dropped").text
    r = c.post("/dropped/clear", data={"csrf": csrf, "channel_type": "fake",
                                        "platform_id": "chat-9"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and "done=" in r.headers["location"]
    page = c.get("/dropped").text
    assert "chat-9" not in page.replace("cleared fake:chat-9", "") and "No dropped senders" in page
    r = c.post("/dropped/clear", data={"csrf": csrf, "channel_type": "fake",
                                        "platform_id": "chat-9"}, follow_redirects=False)  # fmt: skip
    assert "error=" in r.headers["location"]  # nothing left to clear: said, not a crash
    health = c.get("/health").text
    assert "Runner backend" in health and "subprocess" in health
    assert "log" in c.get("/api/health").json()


def test_agent_written_card_text_is_escaped(rig: WebRig) -> None:
    """A card's title and question carry agent text: the dashboard shows it as text."""
    from carapace.permissions.approvals import request_approval
    from carapace.permissions.approvals_host import HostContext

    c = rig.client()
    csrf = rig.login(c)
    main = _main(rig)
    c.post(f"/api/chat/{main}/send", json={"text": "<img src=x onerror=alert(1)>"},
           headers={"x-csrf-token": csrf})  # fmt: skip
    sid = wait_for(lambda: next((s.id for s in rig.on_loop(
        lambda: list_sessions(rig.host.db, agent_group_id=main)) if s.messaging_group_id), None))  # fmt: skip
    payload = {"frame": {"id": "f", "command": "groups-list", "args": {}}, "question": "q"}
    rig.on_loop(lambda: request_approval(HostContext(rig.host), sid, "cli_command", payload,
                                         "<script>alert(1)</script>", "<b onclick=x>hi</b>"))  # fmt: skip
    page = c.get("/approvals").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "<b onclick" not in page
    sess = c.get(f"/sessions/{sid}").text
    assert "<img src=x" not in sess and "&lt;img src=x" in sess
    assert "script-src 'self'" in c.get("/approvals").headers["content-security-policy"]


def test_find_a_day_s_sessions_and_a_task_s_history(rig: WebRig) -> None:
    main = _main(rig)
    day = utcnow() - timedelta(days=1)
    rig.on_loop(lambda: create_session(rig.host.db, main, None, id="sess-yesterday", now=day))
    rig.on_loop(lambda: create_session(rig.host.db, main, None, id="sess-old",
                                       now=day - timedelta(days=9)))  # fmt: skip
    c = rig.client()
    csrf = rig.login(c)
    page = c.get(f"/sessions?day={day.date().isoformat()}").text
    assert "sess-yesterday" in page and "sess-old" not in page
    assert c.get("/sessions?day=<script>").status_code == 200
    c.post("/tasks/create", data={"csrf": csrf, "group": "main", "prompt": "Daily digest",
                                  "cron": "0 8 * * *"})  # fmt: skip
    tid = _admin(rig, "tasks-list", {})["data"][0]["id"]  # type: ignore[index]
    detail = c.get(f"/tasks/{tid}").text
    assert "Daily digest" in detail and "No runs yet" in detail
    assert c.get("/tasks/no-such-task").status_code == 404


def test_a_session_s_queue_is_its_pending_messages(tmp_path: Path) -> None:
    from carapace.db.session import init_session_folder, open_inbound
    from carapace.web.routes_dash import queue_lengths

    data = tmp_path / "data"
    paths = SessionPaths.of(data, "ag-1", "sess-q")
    init_session_folder(paths)
    conn = open_inbound(paths)
    for i, status in enumerate(("pending", "pending", "completed")):
        conn.execute("INSERT INTO messages_in (id, seq, kind, timestamp, status, content) "
                     "VALUES (?, ?, 'chat', '2026-01-01T00:00:00Z', ?, '{}')",
                     (f"m{i}", 2 * i + 2, status))  # fmt: skip
    conn.commit()
    conn.close()
    bad = SessionPaths.of(data, "ag-1", "sess-bad")
    bad.root.mkdir(parents=True)
    bad.inbound.write_bytes(b"not a database at all" * 100)
    got = queue_lengths(data, [("sess-q", "ag-1"), ("sess-none", "ag-1"), ("sess-bad", "ag-1")])
    assert got == {"sess-q": 2, "sess-none": 0, "sess-bad": None}
