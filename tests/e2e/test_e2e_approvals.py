"""Issue 6 end to end: unknown senders on a ``request_approval`` chat and an agent's
``create_agent``, decided with ``carapace admin approvals`` on a running host."""

from __future__ import annotations

import json
from typing import Any

from e2e_helpers import E2E, rows, wait_for


def _hold_stranger(e2e: E2E) -> dict[str, Any]:
    e2e.ok("messaging-groups", "update", "--id", e2e.cli_mg(),
           "--unknown-sender-policy", "request_approval")  # fmt: skip
    r = e2e.send("hi from a stranger", "--as", "stranger", timeout=5)
    assert r.returncode == 0 and "held for approval" in r.stdout, (r.stdout, r.stderr)
    r = e2e.send("and again", "--as", "stranger", timeout=5)  # kept with the same approval
    assert r.returncode == 0 and "held for approval" in r.stdout, (r.stdout, r.stderr)
    [pending] = e2e.ok("approvals", "list")
    assert pending["kind"] == "sender" and pending["code"] and pending["expires_at"]
    return dict(pending)


def test_held_sender_approved_by_code_reply_reaches_next_client(e2e: E2E) -> None:
    e2e.start_host()
    assert e2e.send("warm up").returncode == 0
    pending = _hold_stranger(e2e)
    out = e2e.ok("approvals", "approve", pending["code"])  # the short reply code works
    assert out["id"] == pending["id"] and out["decision"] == "approved"
    assert e2e.ok("approvals", "list") == []
    [d] = e2e.sessions()
    wait_for(lambda: sum("stranger" in c for (c,) in rows(
        d / "inbound.db", "SELECT content FROM messages_in")) == 2, what="both replayed")  # fmt: skip
    # nobody of the chat is connected: the replies wait, the next client gets them
    r = e2e.send("owner again", "--json")
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in r.stdout.splitlines()]
    assert any(not m["own"] for m in got) and any(m["own"] for m in got), got
    earlier = " ".join(str(m["text"]) for m in got if not m["own"])
    assert "again" in earlier or "stranger" in earlier
    # the stranger is a member now: answered directly
    r = e2e.send("member now", "--as", "stranger")
    assert r.returncode == 0 and '"member now"' in r.stdout
    e2e.stop_host()


def test_reject_and_errors(e2e: E2E) -> None:
    e2e.start_host()  # the default approval lifetime: nothing here races an expiry
    pending = _hold_stranger(e2e)
    code, err, _ = e2e.admin("approvals", "approve", pending["id"], "--user", "cli:stranger")
    assert code == 1 and err["error"]["code"] == "permission-denied"  # not authorised
    assert len(e2e.ok("approvals", "list")) == 1  # nothing changed
    out = e2e.ok("approvals", "reject", pending["id"])
    assert out["decision"] == "rejected"
    code, err, _ = e2e.admin("approvals", "reject", pending["id"])
    assert code == 1 and err["error"]["code"] == "handler-error"  # decided already
    code, err, _ = e2e.admin("approvals", "approve", "nsa-nope")
    assert code == 1 and err["error"]["code"] == "not-found"
    r = e2e.send("denied now", "--as", "stranger", timeout=3)
    assert r.returncode == 1 and "not routed" in r.stderr  # a deny is remembered
    assert e2e.sessions() == [] or not any(
        "stranger" in c for s in e2e.sessions()
        for (c,) in rows(s / "inbound.db", "SELECT content FROM messages_in"))  # fmt: skip
    e2e.stop_host()


def test_expiry_drops_the_held_messages(e2e: E2E) -> None:
    e2e.write_settings("approval_ttl_s = 3\n")
    e2e.start_host()
    e2e.ok("messaging-groups", "update", "--id", e2e.cli_mg(),
           "--unknown-sender-policy", "request_approval")  # fmt: skip
    # a stranger's card expires after approval_ttl_s; its messages are dropped
    r = e2e.send("knock knock", "--as", "visitor", timeout=3)
    assert "held for approval" in r.stdout
    wait_for(lambda: e2e.ok("approvals", "list") == [], timeout=30, what="expiry")
    [(status,)] = rows(e2e.central, "SELECT status FROM carapace_cards WHERE kind='sender' "
                       "ORDER BY created_at DESC LIMIT 1")  # fmt: skip
    assert status == "expired"
    e2e.stop_host()


def test_decision_survives_a_host_restart(e2e: E2E) -> None:
    e2e.start_host()
    pending = _hold_stranger(e2e)
    e2e.kill_host()  # pending across a crash
    e2e.start_host()
    assert [p["id"] for p in e2e.ok("approvals", "list")] == [pending["id"]]
    e2e.stop_host()
    out = e2e.ok("approvals", "approve", pending["id"])  # no host: decided directly
    assert out["decision"] == "approved"
    e2e.start_host()  # the queued replay runs now
    r = e2e.send("who else", "--json")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: any("stranger" in c for s in e2e.sessions() for (c,) in rows(
        s / "inbound.db", "SELECT content FROM messages_in")), what="replayed")  # fmt: skip
    e2e.stop_host()


def test_create_agent_is_held_until_approved(e2e: E2E) -> None:
    script = [
        {"match": "make a helper", "tool_calls": [{"name": "create_agent", "arguments": {
            "name": "Helper", "instructions": "You help."}}], "reply": "asked"},
        {"match": "created|rejected", "reply": ""},  # no reply to the host's note
    ]  # fmt: skip
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(script))
    e2e.start_host()
    r = e2e.send("please make a helper")
    assert r.returncode == 0 and "asked" in r.stdout, r.stderr
    [pending] = wait_for(lambda: e2e.ok("approvals", "list"), what="approval")
    assert pending["kind"] == "approval" and pending["action"] == "create_agent"
    assert [g["folder"] for g in e2e.ok("groups", "list")] == ["main"]  # held
    out = e2e.ok("approvals", "approve", pending["id"])
    assert out["decision"] == "approved" and "created" in out["message"]
    groups = {g["folder"]: g["id"] for g in e2e.ok("groups", "list")}
    assert set(groups) == {"main", "helper"} and (e2e.home / "groups" / "helper").is_dir()
    dests = {(d["agent_group_id"], d["local_name"]) for d in e2e.ok("destinations", "list")}
    assert {(groups["main"], "helper"), (groups["helper"], "parent")} <= dests
    [d] = e2e.sessions(groups["main"])
    wait_for(lambda: ("helper",) in rows(d / "inbound.db", "SELECT name FROM destinations"),
             what="projection into the running session")  # fmt: skip
    e2e.stop_host()
