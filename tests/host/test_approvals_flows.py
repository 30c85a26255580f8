"""Unknown senders, unknown channels, generic approvals and questions, end to end through the
``Host`` test API with a recording fake channel and a fake clock (spec §6, §11.2–11.3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from carapace.channels.fake import make_event
from carapace.config import Settings
from carapace.db import approvals as dba
from carapace.db import destinations, groups, messaging, users
from carapace.db.sessions import list_sessions
from carapace.host.host import Host, HostOptions
from carapace.permissions import approvals, cards, questions, system_actions
from carapace.permissions.approvals_host import HostContext, tick
from carapace.sandbox import bwrap_unusable_reason

if TYPE_CHECKING:
    from host_rig import Rig  # tests/host/conftest.py


def setup_sender(rig: Rig, n_agents: int = 1) -> tuple[list[str], str]:
    ags = [rig.agent(f"ag{i}") for i in range(n_agents)]
    mg = rig.chat("chat-1", policy="request_approval")
    for ag in ags:
        rig.wire(mg, ag)
    rig.user("fake:owner", role="owner")
    return ags, mg


def stranger(text: str = "hi", **kw: Any) -> Any:
    return make_event(text, sender="Stranger", sender_id="stranger", **kw)


def cards_sent(rig: Rig) -> list[dict[str, Any]]:
    return [d.content for d in rig.channel.deliveries if d.kind == "chat-sdk"]


def texts_to(rig: Rig, pid: str) -> list[str]:
    return [str(d.content.get("text")) for d in rig.channel.deliveries
            if d.platform_id == pid and d.kind == "chat"]  # fmt: skip


def test_unknown_sender_approve_replays(rig: Rig) -> None:
    [ag], _mg = setup_sender(rig)
    res = rig.run(rig.host.route(stranger()))
    assert res.routed == [] and len(dba.list_sender_approvals(rig.db)) == 1
    again = rig.run(rig.host.route(stranger("again")))  # one card; the message is kept
    assert again.routed == [] and again.held == res.held and len(res.held) == 1
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    assert card["type"] == "ask_question" and card["questionId"].startswith("nsa-")
    assert card["title"] == "👤 New sender" and [o["value"] for o in card["options"]] == [
        "approve", "reject"]  # fmt: skip
    assert rig.channel.deliveries[0].platform_id == "owner"  # the owner's DM
    out = approvals.handle_action(HostContext(rig.host), card["questionId"], "0", "owner", "fake",
                                  "owner")  # fmt: skip
    assert out.status == "approved"
    rig.run(tick(rig.host))
    assert users.is_member(rig.db, "fake:stranger", ag)
    assert dba.list_sender_approvals(rig.db) == []
    [s] = rig.sessions()
    rows = rig.inbound(s)  # both held messages, replayed in order
    assert [json.loads(r["content"])["text"] for r in rows] == ["hi", "again"]
    assert all(r["trigger"] == 1 for r in rows)
    assert rig.channel.edits[-1][3] == "👤 New sender\n\n✅ Allowed"


def test_unknown_sender_deny_is_remembered(rig: Rig) -> None:
    setup_sender(rig)
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    out = approvals.decide(HostContext(rig.host), card["questionId"], False, "fake:owner")
    assert out["status"] == "rejected"
    rig.run(tick(rig.host))
    assert users.list_members(rig.db) == [] and rig.sessions() == []
    rig.run(rig.host.route(stranger("let me in")))
    rig.run(tick(rig.host))
    assert len(cards_sent(rig)) == 1 and dba.list_sender_approvals(rig.db) == []
    rig.clock.advance(Settings().deny_ttl_s + 1)
    rig.run(rig.host.route(stranger("please")))
    rig.run(tick(rig.host))
    assert len(cards_sent(rig)) == 2


def test_unauthorised_click_changes_nothing(rig: Rig) -> None:
    [ag], _ = setup_sender(rig)
    rig.user("fake:bystander")
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    out = approvals.handle_action(HostContext(rig.host), card["questionId"], "0", "bystander",
                                  "fake", "chat-1")  # fmt: skip
    assert out.status == "unauthorised"
    rig.run(tick(rig.host))
    assert not users.is_member(rig.db, "fake:stranger", ag)
    assert len(dba.list_sender_approvals(rig.db)) == 1 and rig.channel.edits == []
    assert texts_to(rig, "chat-1") == [cards.NOT_AUTHORISED]


def test_expiry_edits_card_and_unblocks(rig: Rig) -> None:
    setup_sender(rig)
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    rig.clock.advance(Settings().approval_ttl_s + 1)
    rig.run(tick(rig.host))
    assert dba.list_sender_approvals(rig.db) == []
    assert "Expired" in rig.channel.edits[-1][3]
    [card] = cards_sent(rig)
    assert cards.get_card(rig.db, card["questionId"]).status == "expired"  # type: ignore[union-attr]
    out = approvals.decide(HostContext(rig.host), card["questionId"], True, "fake:owner")
    assert out["status"] == "gone"
    rig.run(rig.host.route(stranger("hello?")))
    rig.run(tick(rig.host))
    assert len(cards_sent(rig)) == 2


def test_two_wirings_refusing_make_one_card(rig: Rig) -> None:
    setup_sender(rig, n_agents=2)
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    assert len(cards_sent(rig)) == 1 and len(dba.list_sender_approvals(rig.db)) == 1


def test_strict_and_public_policies(rig: Rig) -> None:
    [_ag], mg = setup_sender(rig)
    messaging.update_messaging_group(rig.db, mg, unknown_sender_policy="strict")
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    assert cards_sent(rig) == [] and dba.list_sender_approvals(rig.db) == []
    messaging.update_messaging_group(rig.db, mg, unknown_sender_policy="public")
    assert rig.run(rig.host.route(stranger("public"))).routed


def test_restart_mid_flow_loses_nothing(rig: Rig) -> None:
    [ag], _ = setup_sender(rig)
    rig.run(rig.host.route(stranger()))  # card queued, not yet sent
    rig.run(rig.host.stop())
    rig.host.close()
    host2 = Host(rig.host.home, settings=rig.host.settings, clock=rig.clock,
                 channels=[rig.channel], backend=rig.backend,
                 options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
    rig.host = host2
    rig.run(host2.start(background=False))
    rig.run(tick(host2))
    rig.run(tick(host2))
    [card] = cards_sent(rig)
    approvals.decide(HostContext(host2), card["questionId"], True, "fake:owner")
    rig.run(tick(host2))
    assert len(cards_sent(rig)) == 1 and users.is_member(host2.db, "fake:stranger", ag)
    assert len(list_sessions(host2.db)) == 1


def test_text_reply_code_on_a_chat_without_buttons(rig: Rig) -> None:
    [ag], _ = setup_sender(rig)
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    code = card["replyCode"]
    assert f"`{code} allow`" in card["text"]
    # the stranger cannot answer; the owner can, and the reply is not routed to an agent
    rig.user("fake:someone")
    intruder = make_event(f"{code} allow", platform_id="owner", sender_id="someone")
    assert rig.run(rig.host.route(intruder)).routed == []
    assert not users.is_member(rig.db, "fake:stranger", ag)
    reply = make_event(f"{code.lower()} allow", platform_id="owner", sender_id="owner")
    assert rig.run(rig.host.route(reply)).routed == []
    rig.run(tick(rig.host))
    assert users.is_member(rig.db, "fake:stranger", ag)


def test_a_text_reply_sees_a_card_changed_by_another_process_since_the_last_message(
    rig: Rig,
) -> None:
    """The router keeps card lookups while the central DB is unchanged (issue 19: nearly
    every message starts with a word the reply pattern takes for a code). A card answered
    elsewhere (the web UI, the CLI) since the last lookup is seen at the next message."""
    from carapace.db.connection import connect

    setup_sender(rig)
    rig.run(rig.host.route(stranger()))
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    code = card["replyCode"]
    rig.user("fake:someone")
    intruder = make_event(f"{code} allow", platform_id="owner", sender_id="someone")
    assert rig.run(rig.host.route(intruder)).routed == []  # looked up: pending, refused
    [row] = [c for c in cards.pending_cards(rig.db) if c.code == code]
    other = connect(rig.host.home.central_db)  # another process answers it
    try:
        cards.update_card(other, row.card_id, status="denied")
    finally:
        other.close()
    reply = make_event(f"{code} allow", platform_id="owner", sender_id="owner")
    assert rig.run(rig.host.route(reply)).routed == []
    rig.run(tick(rig.host))
    assert texts_to(rig, "owner")[-1] == f"{code}: this request is denied already."


def test_unknown_channel_connect_and_reject(rig: Rig) -> None:
    ag = rig.agent("andy")
    rig.user("fake:owner", role="owner")
    ev = make_event("hello bot", platform_id="chat-new", sender_id="caller", is_mention=True)
    rig.run(rig.host.route(ev))
    rig.run(rig.host.route(ev))
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    assert card["title"] == "💬 New direct message"
    assert card["options"][0]["value"] == f"connect:{ag}"
    mg_id = card["questionId"]
    out = approvals.decide(HostContext(rig.host), mg_id, True, "fake:owner")
    assert out["status"] == "approved"
    rig.run(tick(rig.host))
    [w] = messaging.wirings_for_chat(rig.db, mg_id)
    assert (w.engage_mode, w.engage_pattern, w.sender_scope) == ("pattern", ".", "known")
    assert users.is_member(rig.db, "fake:caller", ag)
    [s] = rig.sessions()
    assert json.loads(rig.inbound(s)[0]["content"])["text"] == "hello bot"
    # another chat, rejected: later mentions are silent
    ev2 = make_event("yo", platform_id="chat-x", sender_id="c2", is_mention=True)
    rig.run(rig.host.route(ev2))
    rig.run(tick(rig.host))
    card2 = cards_sent(rig)[-1]
    approvals.decide(HostContext(rig.host), card2["questionId"], False, "fake:owner")
    rig.run(rig.host.route(ev2))
    rig.run(tick(rig.host))
    assert len(cards_sent(rig)) == 2
    assert messaging.get_messaging_group(rig.db, card2["questionId"]).denied_at  # type: ignore[union-attr]


def test_new_agent_name_survives_restart_of_state(rig: Rig) -> None:
    rig.agent("andy")
    rig.user("fake:owner", role="owner")
    rig.run(rig.host.route(make_event("hi", platform_id="chat-n", sender_id="c", is_mention=True)))
    rig.run(tick(rig.host))
    [card] = cards_sent(rig)
    ctx = HostContext(rig.host)
    out = approvals.handle_action(ctx, card["questionId"], "1", "owner", "fake", "owner")
    assert out.status == "pending"
    rig.run(tick(rig.host))
    assert "Reply with the name" in texts_to(rig, "owner")[-1]
    rig.run(rig.host.route(make_event("Helper Bot", platform_id="owner", sender_id="owner")))
    rig.run(tick(rig.host))
    g = groups.get_agent_group_by_folder(rig.db, "helper-bot")
    assert g is not None and messaging.wirings_for_chat(rig.db, card["questionId"])
    assert texts_to(rig, "owner")[-1] == '✅ Agent "Helper Bot" created and connected.'


def agent_session(rig: Rig) -> Any:
    ag = rig.agent("main")
    mg = rig.chat("chat-1")
    rig.wire(mg, ag)
    rig.user("fake:owner", role="owner")
    rig.run(rig.host.route(make_event("hi", sender_id="owner")))
    [s] = rig.sessions()
    return ag, s


def test_create_agent_held_until_approved(rig: Rig) -> None:
    ag, s = agent_session(rig)
    rig.reply(s, {"action": "create_agent", "requestId": "r1", "name": "Researcher",
                  "instructions": "Dig."}, kind="system")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    assert groups.get_agent_group_by_folder(rig.db, "researcher") is None
    rig.run(tick(rig.host))
    card = cards_sent(rig)[-1]
    assert card["questionId"].startswith("appr-")
    rig.user("fake:nobody")
    bad = approvals.decide(HostContext(rig.host), card["questionId"], True, "fake:nobody")
    assert bad["status"] == "unauthorised"
    ok = approvals.decide(HostContext(rig.host), card["replyCode"], True, "fake:owner")
    assert ok["status"] == "approved"
    child = groups.get_agent_group_by_folder(rig.db, "researcher")
    assert child is not None
    assert destinations.get_destination(rig.db, ag, "researcher") is not None
    assert destinations.get_destination(rig.db, child.id, "parent") is not None
    note = json.loads(rig.inbound(s)[-1]["content"])
    assert note["sender"] == "system" and 'Agent "researcher" created' in note["text"]


def test_install_packages_rejected_and_expired(rig: Rig) -> None:
    ag, s = agent_session(rig)
    ctx = HostContext(rig.host)
    system_actions.handle_system_action(ctx, s.id, {"action": "install_packages", "apt": ["curl"]})
    aid = dba.list_approvals(rig.db)[0].approval_id
    approvals.decide(ctx, aid, False, "fake:owner")
    assert "rejected" in json.loads(rig.inbound(s)[-1]["content"])["text"]
    system_actions.handle_system_action(ctx, s.id, {"action": "add_mcp_server", "name": "x",
                                               "command": "run-x"})  # fmt: skip
    rig.clock.advance(Settings().approval_ttl_s + 1)
    rig.run(tick(rig.host))
    rig.stored()
    assert dba.list_approvals(rig.db) == []
    assert "expired" in json.loads(rig.inbound(s)[-1]["content"])["text"]
    cfg = groups.get_container_config(rig.db, ag)
    assert cfg is not None and cfg.mcp_servers == "{}" and cfg.packages_apt == "[]"


def test_list_pending_covers_every_kind(rig: Rig) -> None:
    setup_sender(rig)
    rig.run(rig.host.route(stranger()))
    found = approvals.list_pending(rig.db)
    assert [f["kind"] for f in found] == ["sender"] and found[0]["expires_at"]
    assert rig.host.settings.approval_ttl_s == questions.DEFAULT_TTL_S


def test_approved_apt_package_is_refused_with_its_reason(rig: Rig) -> None:
    ag, s = agent_session(rig)
    ctx = HostContext(rig.host)
    system_actions.handle_system_action(ctx, s.id, {"action": "install_packages", "apt": ["jq"]})
    [row] = dba.list_approvals(rig.db)
    card = cards.get_card(rig.db, row.approval_id)
    assert card is not None and "will NOT be installed" in card.question
    out = approvals.decide(ctx, row.approval_id, True, "fake:owner")
    note = json.loads(rig.inbound(s)[-1]["content"])["text"]
    assert out["status"] == "approved"
    assert "Not installed: apt:jq" in note and "does not install apt packages" in note
    assert "Installed:" not in note
    cfg = groups.get_container_config(rig.db, ag)
    assert cfg is None or cfg.packages_apt == "[]"


def test_add_mcp_server_checked_carded_and_applied(rig: Rig) -> None:
    ag, s = agent_session(rig)
    ctx = HostContext(rig.host)
    for bad, why in (({"name": "a b", "command": "x"}, "name is required"),
                     ({"name": "w", "url": "file:///etc"}, "url must be"),
                     ({"name": "w", "command": "x", "args": [1]}, "must be strings")):  # fmt: skip
        system_actions.handle_system_action(ctx, s.id, {"action": "add_mcp_server", **bad})
        assert why in json.loads(rig.inbound(s)[-1]["content"])["text"]
    assert dba.list_approvals(rig.db) == []
    system_actions.handle_system_action(ctx, s.id, {"action": "add_mcp_server", "name": "web",
                                               "url": "https://mcp.example/mcp"})  # fmt: skip
    [row] = dba.list_approvals(rig.db)
    card = cards.get_card(rig.db, row.approval_id)
    assert card is not None and "https://mcp.example/mcp" in card.question

    async def approve() -> None:  # the restart is scheduled on the host's loop
        approvals.decide(ctx, row.approval_id, True, "fake:owner")

    rig.run(approve())
    rig.stored()
    note = json.loads(rig.inbound(s)[-1]["content"])["text"]
    assert 'MCP server "web" added' in note and "next turn" in note
    cfg = groups.get_container_config(rig.db, ag)
    assert cfg is not None
    assert json.loads(cfg.mcp_servers) == {
        "web": {"type": "http", "url": "https://mcp.example/mcp"}
    }


@pytest.mark.skipif(bwrap_unusable_reason() is not None, reason="bubblewrap unusable")
def test_approved_pip_package_installs_off_the_loop_then_the_agent_is_told(rig: Rig) -> None:
    ag, s = agent_session(rig)
    ctx = HostContext(rig.host)
    system_actions.handle_system_action(ctx, s.id, {"action": "install_packages", "pip": ["six"],
                                               "apt": ["jq"]})  # fmt: skip
    [row] = dba.list_approvals(rig.db)
    card = cards.get_card(rig.db, row.approval_id)
    assert card is not None and "pip (PyPI, into its own virtualenv)" in card.question

    async def approve_and_wait() -> str:
        approvals.decide(ctx, row.approval_id, True, "fake:owner")
        await rig.host.sessions.settle()
        first = json.loads(rig.inbound(s)[-1]["content"])["text"]
        assert first.startswith("Approved: installing pip:six")
        for _ in range(6000):  # the loop keeps running while pip works in a thread
            await rig.host.sessions.settle()
            last = json.loads(rig.inbound(s)[-1]["content"])["text"]
            if last != first:
                return str(last)
            await asyncio.sleep(0.05)
        raise AssertionError("no result note")

    note = rig.run(approve_and_wait())
    assert note.startswith("Installed: pip:six.") and "Not installed: apt:jq" in note
    cfg = groups.get_container_config(rig.db, ag)
    assert cfg is not None and cfg.settings_dict()["packages_pip"] == ["six"]


async def _until(what: str, cond: Any) -> None:
    """Wait until ``cond()`` (an event, not a schedule: at most 10 s)."""
    import time

    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.002)


def test_the_card_pump_looks_only_when_something_changed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background card pump's second-by-second look (expiry, cards for rows written
    without one, due effects: six queries) ran every second on an idle host, most of its
    idle CPU. It looks now when kicked, when the central DB changed (another connection's
    commit: the admin CLI's process; or this host's own writes), and when a pending card's
    expiry comes; a quiet tick is one ``PRAGMA``."""
    import sqlite3

    from carapace.permissions import approvals_host

    monkeypatch.setattr(approvals_host, "PUMP_POLL_S", 0.002)  # ticks, not a schedule
    looks: list[int] = []
    real = approvals_host.card_effects.pump

    async def counting(*a: Any, **kw: Any) -> int:
        looks.append(1)
        return await real(*a, **kw)

    monkeypatch.setattr(approvals_host.card_effects, "pump", counting)
    host = rig.host
    db_path = str(host.home.central_db)

    async def ticks(n: int) -> None:  # at least n quiet ticks of the pump (each one PRAGMA)
        calls = [0]
        real_state = approvals_host._db_state

        def state(db: Any) -> Any:
            calls[0] += 1
            return real_state(db)

        monkeypatch.setattr(approvals_host, "_db_state", state)
        await _until(f"{n} ticks", lambda: calls[0] >= n)
        monkeypatch.setattr(approvals_host, "_db_state", real_state)

    async def scenario() -> None:
        task = asyncio.ensure_future(approvals_host._pump_loop(host))
        try:
            await _until("the first look", lambda: len(looks) == 1)
            await ticks(20)
            assert len(looks) == 1  # nothing changed: no look
            other = sqlite3.connect(db_path, isolation_level=None)
            try:  # another process's commit (any): looked at
                other.execute("CREATE TABLE IF NOT EXISTS t_other (x)")
                other.execute("INSERT INTO t_other VALUES (1)")
            finally:
                other.close()
            await _until("a look after another connection's commit", lambda: len(looks) == 2)
            await ticks(10)
            assert len(looks) == 2
            cards.kick()
            await _until("a look when kicked", lambda: len(looks) == 3)
            now = host.now()
            cards.create_card(host.db, "appr-x", "approval", title="t", question="q",
                              options=[], now=now, expires_at=now + timedelta(minutes=5),
                              deliver=False)  # fmt: skip
            await _until("a look after the host's own write", lambda: len(looks) == 4)
            await ticks(10)
            assert len(looks) == 4
            rig.clock.advance(6 * 60)  # the card's expiry comes: no write, still a look
            await _until("a look when the expiry is due", lambda: len(looks) == 5)
            row = host.db.execute("SELECT status FROM carapace_cards WHERE card_id='appr-x'")
            assert row.fetchone()[0] == "expired"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    rig.run(scenario())


def test_with_a_checkpointer_the_card_pump_sleeps_until_told(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running host's checkpointer thread looks at the central DB every second anyway;
    it tells the pump when another connection (the loop's, another process's) committed,
    so a quiet host's loop is never woken by the pump between due times (it was every
    second). A commit of another process, the host's own write, a kick and a card's expiry
    coming are each looked at."""
    import sqlite3

    from carapace.host import checkpointer
    from carapace.permissions import approvals_host

    monkeypatch.setattr(checkpointer, "INTERVAL_S", 0.002)  # the checkpointer's ticks
    monkeypatch.setattr(approvals_host, "PUMP_POLL_S", 0.002)  # (the shortest pump wait)
    looks: list[int] = []
    parks = [0]  # the pump's waits: one per pass of its loop (a wake starts the next)
    parked = [False]  # between a pass's wait and the next pass's first look at the file
    real_pump, real_wait = approvals_host.card_effects.pump, approvals_host._pump_wait
    real_state = approvals_host._db_state

    async def counting(*a: Any, **kw: Any) -> int:
        looks.append(1)
        return await real_pump(*a, **kw)

    def waiting(*a: Any) -> float:
        parks[0] += 1
        parked[0] = True
        return real_wait(*a)

    def state(db: Any) -> Any:
        parked[0] = False
        return real_state(db)

    monkeypatch.setattr(approvals_host.card_effects, "pump", counting)
    monkeypatch.setattr(approvals_host, "_pump_wait", waiting)
    monkeypatch.setattr(approvals_host, "_db_state", state)
    host = rig.host
    cp = checkpointer.Checkpointer(host.home.central_db, host.db, on_change=cards.kick)
    cycles = [0]
    real_checkpoint = cp.checkpoint

    def checkpoint(conn: Any) -> None:
        cycles[0] += 1
        real_checkpoint(conn)

    cp.checkpoint = checkpoint  # type: ignore[method-assign]

    async def settled() -> None:  # parked, and still so 3 checkpoints later (a look under
        import time  # way ends first, and a kick that came during it is served)

        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the pump never stays parked"
            await _until("the pump parked", lambda: parked[0])
            seen, at = parks[0], cycles[0]
            await _until("3 checkpoints", lambda at=at: cycles[0] >= at + 3)
            if parked[0] and parks[0] == seen:
                return

    async def quiet(n: int) -> None:  # n of the checkpointer's looks: no wake of the pump
        await settled()
        before, start = parks[0], cycles[0]
        await _until(f"{n} checkpoints", lambda: cycles[0] >= start + n)
        assert parks[0] == before

    async def looked(what: str, before: int) -> None:  # a look, then quiet again
        await _until(what, lambda: len(looks) > before)
        await quiet(20)

    async def scenario() -> None:
        task = asyncio.ensure_future(approvals_host._pump_loop(host))
        try:
            await _until("the first look", lambda: len(looks) >= 1)
            host._checkpointer = cp
            cp.start()
            await looked("the checkpointer's first look told", 1)
            assert real_wait(host, 0.0, None) == approvals_host.EXPIRY_EVERY_S
            await quiet(40)
            n = len(looks)
            other = sqlite3.connect(str(host.home.central_db), isolation_level=None)
            try:  # another process's commit (any, one): looked at
                other.executescript("BEGIN; CREATE TABLE IF NOT EXISTS t_other (x); "
                                    "INSERT INTO t_other VALUES (1); COMMIT;")  # fmt: skip
            finally:
                other.close()
            await looked("a look after another connection's commit", n)
            n = len(looks)
            cards.kick()
            await looked("a look when kicked", n)
            n = len(looks)
            now = host.now()
            cards.create_card(host.db, "appr-y", "approval", title="t", question="q",
                              options=[], now=now, expires_at=now + timedelta(seconds=0.05),
                              deliver=False)  # fmt: skip
            await _until("a look after the host's own write", lambda: len(looks) > n)
            n = len(looks)
            rig.clock.advance(60)  # the card's expiry comes: no write, still a look
            await _until("a look when the expiry is due", lambda: len(looks) > n)
            row = host.db.execute("SELECT status FROM carapace_cards WHERE card_id='appr-y'")
            assert row.fetchone()[0] == "expired"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await cp.stop_async()
            host._checkpointer = None

    rig.run(scenario())
