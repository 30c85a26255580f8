"""Login links, the session cookie, CSRF and the routes' refusals (Starlette test client)."""

from __future__ import annotations

from pathlib import Path

from web_rig import WebRig

from carapace.db import users


def test_login_link_sets_strict_httponly_cookie_once(rig: WebRig) -> None:
    c = rig.client()
    link = rig.link("alice", "owner")
    token = link.split("token=", 1)[1]
    assert link.startswith(rig.url) or "/login?token=" in link
    page = c.get(f"/login?token={token}")  # a preview GET does not use the link up
    assert page.status_code == 200 and "web:alice" in page.text
    r = c.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert c.get("/").status_code == 200
    again = rig.client().post("/login", data={"token": token}, follow_redirects=False)
    assert again.status_code == 400  # one time only
    assert rig.client().get(f"/login?token={token}").status_code == 400


def test_web_user_is_a_users_row_with_its_role(rig: WebRig) -> None:
    rig.link("bob", "admin")
    assert rig.on_loop(lambda: users.get_user(rig.host.db, "web:bob")) is not None
    assert rig.on_loop(lambda: users.has_role(rig.host.db, "web:bob", "admin", None, exact=True))


def test_no_cookie_and_wrong_cookie_are_refused(rig: WebRig) -> None:
    c = rig.client()
    for path in ("/", "/chat", "/sessions", "/tasks", "/approvals", "/usage", "/health",
                 "/dropped", "/api/history?chat=alice", "/api/events"):  # fmt: skip
        assert c.get(path).status_code == 401, path
    c.cookies.set("carapace_session", "forged-session-id")
    assert c.get("/").status_code == 401
    assert c.post("/tasks/x/pause", data={"csrf": "x"}).status_code == 401


def test_forged_or_missing_csrf_is_refused_and_changes_nothing(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    r = c.post("/api/chat/main/send", json={"text": "hi"}, headers={"x-csrf-token": "forged"})
    assert r.status_code == 403
    r = c.post("/api/chat/main/send", json={"text": "hi"})
    assert r.status_code == 403
    r = c.post(
        "/tasks/create", data={"csrf": "nope", "group": "main", "prompt": "x", "cron": "0 9 * * *"}
    )
    assert r.status_code == 403
    r = c.post("/logout", data={"csrf": csrf[:-1] + "x"})
    assert r.status_code == 403
    assert c.get("/api/history?chat=bob/x").status_code == 403  # someone else's chat
    main = rig.on_loop(lambda: rig.host.db.execute("SELECT id FROM agent_groups").fetchone()[0])
    assert c.get(f"/api/history?chat=alice/{main}").json()["messages"] == []
    assert c.get("/tasks").text.count("<tr>") == 0
    # a right token from another site's origin is still refused
    r = c.post("/api/chat/main/send", json={"text": "hi"},
               headers={"x-csrf-token": csrf, "origin": "https://evil.example"})  # fmt: skip
    assert r.status_code == 403


def test_logout_ends_the_session(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    r = c.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    c.cookies.clear()
    assert c.get("/").status_code == 401


def test_dashboard_is_for_operators_only(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c, "carol", "none")
    assert c.get("/", follow_redirects=False).status_code == 303
    for path in ("/sessions", "/tasks", "/approvals", "/usage", "/health", "/dropped"):
        assert c.get(path).status_code == 403, path
    assert c.post("/tasks/x/pause", data={"csrf": csrf}).status_code == 403
    # and no agent group to talk to: not a member of main
    assert "none" in c.get("/chat").text
    assert c.post("/api/chat/main/send", json={"text": "hi"},
                  headers={"x-csrf-token": csrf}).status_code == 403  # fmt: skip


def test_static_files_and_unknown_paths(rig: WebRig) -> None:
    c = rig.client()
    assert c.get("/static/app.js").status_code == 200
    assert c.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert c.get("/static/..%2Fapp.py").status_code == 404
    assert c.get("/static/x.py").status_code == 404
    assert c.get("/healthz").json() == {"ok": True}


def test_origin_check_accepts_this_server_and_the_public_url_only() -> None:
    from carapace.web.auth import origin_ok

    assert origin_ok(None, "127.0.0.1:8377")
    assert origin_ok("http://127.0.0.1:8377", "127.0.0.1:8377")
    assert not origin_ok("http://evil.example", "127.0.0.1:8377")
    assert not origin_ok("null", "127.0.0.1:8377")
    assert origin_ok("https://a.example.org", "127.0.0.1:8377", "https://a.example.org")
    assert not origin_ok("https://b.example.org", "127.0.0.1:8377", "https://a.example.org")


def test_a_member_may_chat_with_its_group_only(rig: WebRig) -> None:
    from carapace.db import groups

    main = rig.on_loop(lambda: groups.get_agent_group_by_folder(rig.host.db, "main")).id
    c = rig.client()
    csrf = rig.login(c, "mia", "none")
    rig.on_loop(lambda: users.add_member(rig.host.db, "web:mia", main))
    assert f"/chat/{main}" in c.get("/chat").text
    r = c.post(f"/api/chat/{main}/send", json={"text": "hi"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 202 and r.json()["routed"]
    rig.on_loop(lambda: users.remove_member(rig.host.db, "web:mia", main))
    r = c.post(f"/api/chat/{main}/send", json={"text": "again"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 403


def test_every_page_answers_a_signed_in_owner(rig: WebRig) -> None:
    from carapace.db import groups

    main = rig.on_loop(lambda: groups.get_agent_group_by_folder(rig.host.db, "main")).id
    c = rig.client()
    rig.login(c)
    for path in ("/", "/chat", f"/chat/{main}", "/chat/main", "/inbox", "/sessions", "/approvals",
                 "/tasks", "/dropped", "/usage", "/usage?since=2026-01-01", "/health",
                 "/api/health", "/api/history?chat=alice", "/healthz"):  # fmt: skip
        r = c.get(path)
        assert r.status_code == 200, path
        if "json" not in r.headers["content-type"]:
            assert r.headers["x-frame-options"] == "DENY", path
    for path in ("/chat/nope", "/sessions/nope", "/tasks/nope", "/files/999"):
        assert c.get(path).status_code == 404, path
    assert (
        c.post(
            "/api/action", json={"card": "x"}, headers={"x-csrf-token": rig.login(c)}
        ).status_code
        == 400
    )


def test_expired_links_and_browser_sessions_are_purged(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from carapace.web.store import WebStore

    store = WebStore(tmp_path / "web.db")
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    old = store.create_login_link("web:ann", t0)
    used = store.create_login_link("web:ann", t0)
    assert store.use_login_link(used, t0, days=1) is not None  # a browser session for a day
    later = t0 + timedelta(days=2)
    fresh = store.create_login_link("web:bob", later)  # making a link purges what expired
    counts = [store.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("login_links", "browser_sessions")]  # fmt: skip
    assert counts == [1, 0]
    assert store.peek_login_link(old, later) is None
    assert store.peek_login_link(fresh, later) == "web:bob"
    store.close()
