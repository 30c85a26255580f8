"""The web chat channel end to end: a real host, a real runner (mock provider), the real
web server on loopback for the live stream; cards answered through ``handle_action``."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
from web_rig import WebRig, wait_for

from carapace.db import groups
from carapace.db.sessions import list_sessions
from carapace.permissions.approvals import request_approval
from carapace.permissions.approvals_host import HostContext


def _main(rig: WebRig) -> str:
    return str(rig.on_loop(lambda: groups.get_agent_group_by_folder(rig.host.db, "main")).id)


def _cookie(client: Any) -> str:
    return str(client.cookies.get("carapace_session"))


def test_chat_reply_arrives_live_and_is_in_the_history(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    main = _main(rig)
    pid = f"alice/{main}"
    assert "Chat with" in c.get(f"/chat/{main}").text
    with (
        httpx.Client(base_url=rig.url, timeout=30) as live,
        live.stream(
            "GET", f"/api/events?chat={pid}", headers={"cookie": f"carapace_session={_cookie(c)}"}
        ) as stream,
    ):
        assert stream.status_code == 200
        r = c.post(f"/api/chat/{main}/send", json={"text": "hello agent"},
                   headers={"x-csrf-token": csrf})  # fmt: skip
        assert r.status_code == 202, r.text
        assert r.json()["routed"]
        got: list[dict[str, Any]] = []
        for line in stream.iter_lines():
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                got.append(ev)
                if ev.get("type") == "message" and ev["message"]["direction"] == "out":
                    break
    texts = [e["message"]["content"].get("text") for e in got if e.get("type") == "message"]
    assert texts[0] == "hello agent"
    assert "hello agent" in str(texts[-1])  # the mock provider quotes the message
    hist = c.get(f"/api/history?chat={pid}").json()["messages"]
    assert [m["direction"] for m in hist] == ["in", "out"]
    # the web user was checked by the router as web:alice (an owner)
    sess = rig.on_loop(lambda: list_sessions(rig.host.db, agent_group_id=main))
    assert any(s.messaging_group_id for s in sess)


def test_files_both_ways(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    main = _main(rig)
    data = base64.b64encode(b"col1,col2\n1,2\n").decode()
    r = c.post(f"/api/chat/{main}/send", json={"text": "see file", "files": [{"name": "a.csv", "data": data}]},
               headers={"x-csrf-token": csrf})  # fmt: skip
    assert r.status_code == 202, r.text
    hist = c.get(f"/api/history?chat=alice/{main}").json()["messages"]
    fid = hist[0]["files"][0]["id"]
    got = c.get(f"/files/{fid}")
    assert got.content == b"col1,col2\n1,2\n"
    assert "attachment" in got.headers["content-disposition"]

    # the agent got it as an attachment in its inbox
    def landed() -> bool:
        s = [x for x in rig.on_loop(lambda: list_sessions(rig.host.db, agent_group_id=main))]
        return any(
            (rig.home.data_dir / "v2-sessions" / main / x.id / "inbox").glob("*/a.csv") for x in s
        )

    wait_for(landed, what="attachment in the session inbox")
    # outbound files: the adapter stores and serves them
    from carapace.channels.base import OutboundFile, OutboundMessage

    chat = rig.host.adapters["web"]
    rig.call(chat.deliver(f"alice/{main}", None, OutboundMessage(
        "chat", {"text": "report"}, (OutboundFile("r.txt", b"result"),), "mo-1")))  # fmt: skip
    hist = c.get(f"/api/history?chat=alice/{main}").json()["messages"]
    out = [m for m in hist if m["direction"] == "out" and m["files"]]
    assert c.get(f"/files/{out[-1]['files'][0]['id']}").content == b"result"
    # another user cannot fetch it
    other = rig.client()
    rig.login(other, "dave", "none")
    assert other.get(f"/files/{fid}").status_code == 404
    bad = c.post(f"/api/chat/{main}/send", json={"text": "x", "files": [{"name": "b", "data": "%%%"}]},
                 headers={"x-csrf-token": csrf})  # fmt: skip
    assert bad.status_code == 400


def _approval_in_inbox(rig: WebRig, c: Any, csrf: str) -> tuple[str, dict[str, Any]]:
    main = _main(rig)
    assert c.post(f"/api/chat/{main}/send", json={"text": "hi"},
                  headers={"x-csrf-token": csrf}).status_code == 202  # fmt: skip
    sid = wait_for(lambda: next((s.id for s in rig.on_loop(
        lambda: list_sessions(rig.host.db, agent_group_id=main)) if s.messaging_group_id), None))  # fmt: skip
    payload = {"frame": {"id": "f1", "command": "groups-list", "args": {}}, "question": "q"}
    aid = rig.on_loop(lambda: request_approval(HostContext(rig.host), sid, "cli_command", payload,
                                               "CLI: groups-list", "Run groups-list?"))  # fmt: skip
    assert aid

    def card() -> dict[str, Any] | None:
        for m in c.get("/api/history?chat=alice").json()["messages"]:
            if isinstance(m["content"], dict) and m["content"].get("questionId") == aid:
                return m  # type: ignore[no-any-return]
        return None

    return aid, wait_for(card, what="the card in alice's inbox")


def test_card_buttons_go_through_the_approvals_entry_point(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    other = rig.client()
    ocsrf = rig.login(other, "erin", "none")
    aid, msg = _approval_in_inbox(rig, c, csrf)
    assert [o["label"] for o in msg["content"]["options"]] == ["Approve", "Reject"]
    # not erin's chat; and erin is no approver even in her own inbox
    assert other.post("/api/action", json={"card": aid, "index": 0, "chat": "alice"},
                      headers={"x-csrf-token": ocsrf}).status_code == 403  # fmt: skip
    r = other.post("/api/action", json={"card": aid, "index": 0, "chat": "erin"},
                   headers={"x-csrf-token": ocsrf})  # fmt: skip
    assert r.json()["status"] == "unauthorised"
    r = c.post("/api/action", json={"card": aid, "index": 0, "chat": "alice"},
               headers={"x-csrf-token": csrf})  # fmt: skip
    assert r.json()["status"] == "approved", r.json()

    def edited() -> bool:
        m = next(
            x for x in c.get("/api/history?chat=alice").json()["messages"] if x["id"] == msg["id"]
        )
        return "options" not in m["content"]

    wait_for(edited, what="the decided card loses its buttons")


def test_dashboard_approve_uses_the_same_entry_point(rig: WebRig) -> None:
    c = rig.client()
    csrf = rig.login(c)
    aid, _ = _approval_in_inbox(rig, c, csrf)
    page = c.get("/approvals")
    assert aid in page.text and "Approve" in page.text
    r = c.post(
        f"/approvals/{aid}/decide", data={"csrf": csrf, "index": "1"}, follow_redirects=False
    )
    assert r.status_code == 303 and "done=" in r.headers["location"]
    assert aid not in c.get("/approvals").text


def test_typing_state_while_the_agent_works(rig: WebRig) -> None:
    """ "Typing" is on while the chat's runner runs and the last word is the user's."""
    c = rig.client()
    csrf = rig.login(c)
    main = _main(rig)
    pid = f"alice/{main}"
    c.post(f"/api/chat/{main}/send", json={"text": "first"}, headers={"x-csrf-token": csrf})
    wait_for(lambda: len(c.get(f"/api/history?chat={pid}").json()["messages"]) == 2, what="reply")
    sid = next(s.id for s in rig.on_loop(lambda: list_sessions(rig.host.db, agent_group_id=main))
               if s.messaging_group_id)  # fmt: skip
    assert rig.on_loop(lambda: rig.host.pool.is_running(sid))  # idle, not yet exited
    chat = rig.host.adapters["web"]
    from carapace.timefmt import utcnow

    with (
        httpx.Client(base_url=rig.url, timeout=30) as live,
        live.stream(
            "GET", f"/api/events?chat={pid}", headers={"cookie": f"carapace_session={_cookie(c)}"}
        ) as stream,
    ):
        seen: list[dict[str, Any]] = []
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            seen.append(ev)
            if ev == {"type": "typing", "chat": pid, "on": False}:  # reply was last: off
                rig.on_loop(
                    lambda: chat.store.add_message(pid, "in", "chat", {"text": "more"}, utcnow())
                )
            if ev == {"type": "typing", "chat": pid, "on": True}:
                break
    assert {"type": "typing", "chat": pid, "on": True} in seen


def test_a_resend_after_a_crash_is_stored_once(tmp_path: Path) -> None:
    """Issue 14: the host re-sends (same row, ``resend``) a reply it may have stored before
    it crashed; the page's history keeps one copy. A resend to another chat, or one never
    stored, is stored."""
    import asyncio

    from carapace.bootstrap import init_home
    from carapace.channels.base import ChannelCallbacks, OutboundMessage
    from carapace.config import Home
    from carapace.web.channel import WebChannel

    home = Home(tmp_path / "home")
    init_home(home)
    ch = WebChannel(home)

    async def noop(*_a: Any) -> None:
        return None

    async def go() -> list[str | None]:
        await ch.start(ChannelCallbacks(on_inbound=noop))
        try:
            first = OutboundMessage("chat", {"text": "hi"}, message_out_id="out-1", key="k" * 32)
            again = OutboundMessage("chat", {"text": "hi"}, message_out_id="out-1", key="k" * 32,
                                    resend=True)  # fmt: skip
            never = OutboundMessage("chat", {"text": "new"}, message_out_id="out-2", resend=True)
            return [
                await ch.deliver("alice", None, first),
                await ch.deliver("alice", None, again),
                await ch.deliver("bob", None, again),
                await ch.deliver("alice", None, never),
            ]
        finally:
            await ch.stop()

    ids = asyncio.run(go())
    assert ids[0] == ids[1] and len(set(ids)) == 3
    assert ch.dedupes_sends
