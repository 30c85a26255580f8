"""Routing table: engage modes × sender policies × session modes (spec §3, §6 scenarios)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.db.dropped import list_dropped
from carapace.db.users import get_user


def test_round_trip_row_shape(rig: Rig) -> None:
    ag = rig.agent()
    mg = rig.chat("chan-123", is_group=True)
    rig.wire(mg, ag)
    res = rig.run(rig.host.route(make_event("What is 2+2?", platform_id="chan-123", id="m1")))
    assert [r.message_id for r in res.routed] == [f"m1:{ag}"]
    [s] = rig.sessions()
    assert (s.agent_group_id, s.messaging_group_id, s.thread_id) == (ag, mg, None)
    [row] = rig.inbound(s)
    assert row["seq"] == 2 and row["kind"] == "chat" and row["trigger"] == 1
    assert row["series_id"] == row["id"] and row["channel_type"] == "fake"
    rig.run(rig.host.pool.wake_and_wait(s.id))  # the spawn's file work runs in a thread
    assert [sp.session_id for sp in rig.backend.started] == [s.id]
    # the wake wrote the projections
    assert rig.inbound(s, "SELECT channel_type, platform_id FROM session_routing") == [
        {"channel_type": "fake", "platform_id": "chan-123"}
    ]
    assert rig.inbound(s, "SELECT name, type FROM destinations")[0]["type"] == "channel"
    # the same platform message again is not stored twice
    rig.run(rig.host.route(make_event("What is 2+2?", platform_id="chan-123", id="m1")))
    assert len(rig.inbound(s)) == 1


@pytest.mark.parametrize(
    ("mode", "pattern", "text", "mention", "engaged"),
    [
        ("pattern", ".", "anything", None, True),
        ("pattern", "^hey", "hey you", None, True),
        ("pattern", "^hey", "you hey", None, False),
        ("pattern", "(a+)+$", "aaaa", None, False),  # unsafe pattern: fail closed
        ("mention", None, "hi", True, True),
        ("mention", None, "hi", None, False),
        ("mention-sticky", None, "hi", True, True),
        ("mention-sticky", None, "hi", None, False),
    ],
)
def test_engage_modes(rig: Rig, mode: str, pattern: str | None, text: str, mention: bool | None,
                      engaged: bool) -> None:  # fmt: skip
    ag = rig.agent()
    mg = rig.chat()
    rig.wire(mg, ag, engage_mode="mention")
    if pattern is not None:
        rig.db.execute("UPDATE messaging_group_agents SET engage_mode=?, engage_pattern=?",
                       (mode, pattern))  # fmt: skip
    else:
        rig.db.execute("UPDATE messaging_group_agents SET engage_mode=?", (mode,))
    res = rig.run(rig.host.route(make_event(text, is_mention=mention)))
    assert bool(res.routed) is engaged
    if not engaged:
        [d] = list_dropped(rig.db)
        assert d.reason == "no_agent_engaged" and d.user_id == "fake:u1"


def test_mention_sticky_threads(rig: Rig) -> None:
    ag = rig.agent()
    mg = rig.chat("g", is_group=True, channel="threaded")
    rig.wire(mg, ag, engage_mode="mention-sticky")
    ev = lambda text, thread, mention=None: make_event(  # noqa: E731
        text, channel_type="threaded", platform_id="g", thread_id=thread, is_mention=mention
    )
    assert rig.run(rig.host.route(ev("hi", "t1", True))).routed
    assert rig.run(rig.host.route(ev("follow", "t1"))).routed
    assert not rig.run(rig.host.route(ev("other", "t2"))).routed
    assert [s.thread_id for s in rig.sessions()] == ["t1"]


@pytest.mark.parametrize("policy", ["strict", "request_approval", "public"])
def test_unknown_sender_policy(rig: Rig, policy: str) -> None:
    ag = rig.agent()
    mg = rig.chat(policy=policy)
    rig.wire(mg, ag)
    rig.user("fake:owner", role="owner")
    res = rig.run(rig.host.route(make_event("hi", sender_id="stranger")))
    assert get_user(rig.db, "fake:stranger") is not None
    if policy == "public":
        assert res.routed and not list_dropped(rig.db)
        return
    assert not res.routed and not rig.sessions()
    [d] = list_dropped(rig.db)
    assert d.reason == f"unknown_sender_{policy}" and d.message_count == 1  # not double counted
    held = rig.db.execute("SELECT * FROM pending_sender_approvals").fetchall()
    if policy == "strict":
        assert held == []
    else:
        [row] = held
        assert row["approver_user_id"] == "fake:owner"
        assert "hi" in row["original_message"]  # the message is kept for the replay
        rig.run(rig.host.route(make_event("again", sender_id="stranger")))
        assert len(rig.db.execute("SELECT * FROM pending_sender_approvals").fetchall()) == 1
        assert list_dropped(rig.db)[0].message_count == 2


def test_strict_membership_and_roles(rig: Rig) -> None:
    ag = rig.agent()
    other = rig.agent("other")
    mg = rig.chat(policy="strict")
    rig.wire(mg, ag)
    rig.user("fake:m", member_of=ag)
    rig.user("fake:o", role="owner")
    rig.user("fake:x")
    from carapace.db.users import grant_role

    grant_role(rig.db, "fake:x", "admin", other)
    assert rig.run(rig.host.route(make_event("hi", sender_id="m"))).routed
    assert rig.run(rig.host.route(make_event("hi", sender_id="o"))).routed
    assert not rig.run(rig.host.route(make_event("hi", sender_id="x"))).routed


def test_sender_scope_known_on_public_chat(rig: Rig) -> None:
    ag = rig.agent()
    mg = rig.chat(policy="public")
    rig.wire(mg, ag, sender_scope="known")
    assert not rig.run(rig.host.route(make_event("hi", sender_id="who"))).routed
    rig.user("fake:who", member_of=ag)
    assert rig.run(rig.host.route(make_event("hi", sender_id="who"))).routed


def test_accumulate_only_for_senders_who_pass(rig: Rig) -> None:
    ag = rig.agent()
    mg = rig.chat(policy="strict")
    rig.wire(mg, ag, engage_mode="mention", ignored_message_policy="accumulate")
    rig.user("fake:m", member_of=ag)
    res = rig.run(rig.host.route(make_event("chatter", sender_id="m")))
    assert [r.trigger for r in res.routed] == [0]
    assert rig.backend.started == []
    stranger = rig.run(rig.host.route(make_event("inject", sender_id="evil")))
    assert not stranger.routed
    [s] = rig.sessions()
    assert [r["trigger"] for r in rig.inbound(s)] == [0]
    report = rig.run(rig.host.sweep_once())
    assert report.woken == []


def test_session_modes(rig: Rig) -> None:
    ag = rig.agent()
    g = rig.chat("g", is_group=True, channel="threaded")
    rig.wire(g, ag, session_mode="shared")
    for t in ("t1", "t2"):
        rig.run(
            rig.host.route(make_event("x", channel_type="threaded", platform_id="g", thread_id=t))
        )
    assert sorted(s.thread_id or "" for s in rig.sessions()) == ["t1", "t2"]
    # non-threaded adapter: one session, thread dropped
    ag2 = rig.agent("b")
    mg = rig.chat("n")
    rig.wire(mg, ag2, session_mode="per-thread")
    for t in ("t1", "t2"):
        rig.run(rig.host.route(make_event("x", platform_id="n", thread_id=t)))
    s2 = [s for s in rig.sessions() if s.agent_group_id == ag2]
    assert len(s2) == 1 and all(r["thread_id"] is None for r in rig.inbound(s2[0]))


def test_agent_shared_does_not_merge_into_chat_sessions(rig: Rig) -> None:
    ag = rig.agent()
    a, b, c = rig.chat("a"), rig.chat("b"), rig.chat("c")
    rig.wire(a, ag, session_mode="shared")
    rig.wire(b, ag, session_mode="agent-shared")
    rig.wire(c, ag, session_mode="agent-shared")
    rig.run(rig.host.route(make_event("1", platform_id="a")))
    rig.run(rig.host.route(make_event("2", platform_id="b")))
    rig.run(rig.host.route(make_event("3", platform_id="c")))
    ss = rig.sessions()
    assert len(ss) == 2
    shared = next(s for s in ss if s.messaging_group_id is None)
    assert len(rig.inbound(shared)) == 2


def test_fan_out_two_agents(rig: Rig) -> None:
    a1, a2 = rig.agent("a1"), rig.agent("a2")
    mg = rig.chat("chan", is_group=True, channel="threaded")
    rig.wire(mg, a1, priority=1)
    rig.wire(mg, a2)
    res = rig.run(rig.host.route(make_event("m", channel_type="threaded", platform_id="chan",
                                            thread_id="tf", id="m")))  # fmt: skip
    assert [r.message_id for r in res.routed] == [f"m:{a1}", f"m:{a2}"]
    assert len(rig.sessions()) == 2


def test_unknown_chat_and_unwired_mention(rig: Rig) -> None:
    rig.run(rig.host.route(make_event("plain", platform_id="new")))
    assert rig.db.execute("SELECT COUNT(*) FROM messaging_groups").fetchone()[0] == 0
    assert rig.db.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
    res = rig.run(rig.host.route(make_event("@bot", platform_id="new", is_mention=True)))
    assert res.dropped_reason == "no_agent_wired"
    assert list_dropped(rig.db)[0].reason == "no_agent_wired"


def test_command_gate(rig: Rig) -> None:
    ag = rig.agent()
    mg = rig.chat()
    rig.wire(mg, ag)
    rig.user("fake:boss", role="owner")
    assert not rig.run(rig.host.route(make_event("/help"))).routed
    res = rig.run(rig.host.route(make_event("/clear")))
    assert not res.routed and res.denied == "/clear"
    assert rig.channel.texts() == ["Permission denied: /clear requires admin access."]
    assert rig.run(rig.host.route(make_event("/clear", sender_id="boss"))).routed
    assert rig.run(rig.host.route(make_event("/other"))).routed


@pytest.mark.parametrize("batched", [False, True])
def test_a_refused_insert_is_told_not_read_as_a_duplicate(rig: Rig, batched: bool) -> None:
    """Issue 14 (e): a trigger planted in ``inbound.db`` (writable by an unsandboxed agent)
    that refuses inserts used to read as "id exists already": the message was dropped and
    nobody heard. Now the sender is told, in the chat, that it was not stored (and the route
    returns normally: a channel retrying it would hold up every later message); the other
    rows of a group commit are stored."""
    import sqlite3

    ag = rig.agent()
    mg = rig.chat("chan-9", is_group=True)
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("first", platform_id="chan-9", id="m0")))
    [s] = rig.sessions()
    paths = rig.host.sessions.paths(s)
    rig.host.sessions.release_all()
    with sqlite3.connect(paths.inbound) as conn:
        conn.execute(
            "CREATE TRIGGER hostile BEFORE INSERT ON messages_in WHEN NEW.id LIKE 'bad%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a planted trigger'); END"
        )
    conn.close()
    before = len(rig.channel.deliveries)

    async def both() -> list[Any]:
        return list(await asyncio.gather(
            rig.host.route(make_event("bad one", platform_id="chan-9", id="bad1")),
            rig.host.route(make_event("good one", platform_id="chan-9", id="good1")),
        ))  # fmt: skip

    if batched:
        bad, good = rig.run(both())
        assert [r.message_id for r in good.routed] == [f"good1:{ag}"]
    else:
        bad = rig.run(rig.host.route(make_event("bad one", platform_id="chan-9", id="bad1")))
    assert bad.routed == [] and "refused by a planted trigger" in (bad.dropped_reason or "")
    [notice] = rig.channel.deliveries[before:]
    assert notice.platform_id == "chan-9" and "could not be stored" in notice.content["text"]
    ids = [r["id"] for r in rig.inbound(s)]
    assert f"bad1:{ag}" not in ids
    assert (f"good1:{ag}" in ids) is batched


def test_a_corrupt_session_db_is_told_and_does_not_hold_up_the_channel(rig: Rig) -> None:
    """A session whose inbound.db is not a database any more: its message is refused with
    a notice, and another chat's message right after is routed (a Telegram-style channel
    retrying the refused update forever would have stopped every chat)."""
    ag = rig.agent()
    for chat in ("c-broken", "c-fine"):
        rig.wire(rig.chat(chat), ag)
    rig.run(rig.host.route(make_event("hi", platform_id="c-broken", id="m1")))
    [s] = rig.sessions()
    rig.host.sessions.release_all()
    rig.host.sessions.paths(s).inbound.write_bytes(b"this is not a database" * 300)
    res = rig.run(rig.host.route(make_event("again", platform_id="c-broken", id="m2")))
    assert res.routed == [] and (res.dropped_reason or "").startswith("not stored:")
    assert "could not be stored" in rig.channel.deliveries[-1].content["text"]
    ok = rig.run(rig.host.route(make_event("other chat", platform_id="c-fine", id="m3")))
    assert [r.message_id for r in ok.routed] == [f"m3:{ag}"]


def test_a_burst_is_routed_a_bounded_number_at_a_time_and_in_full(rig: Rig) -> None:
    """Thousands of events at once (a backlog, a flood) never run their routing steps all in
    one event-loop pass: at most ROUTING_AT_ONCE are in flight; the rest wait, none is lost,
    and (when nothing in routing waits) the order of arrival is the order of the seqs."""
    from carapace.host.router import ROUTING_AT_ONCE

    ag = rig.agent()
    mg = rig.chat("chan")
    rig.wire(mg, ag)
    n = ROUTING_AT_ONCE * 3 + 5
    inside, most = 0, 0

    async def burst() -> None:
        gate = asyncio.Event()

        async def counting(event: Any) -> bool:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            if inside >= ROUTING_AT_ONCE:
                gate.set()
            await gate.wait()
            inside -= 1
            return False

        rig.host.router.on_intercept = counting
        await asyncio.gather(
            *(rig.host.route(make_event(f"m{i}", platform_id="chan", id=f"m{i}")) for i in range(n))
        )

    rig.run(burst())
    assert most == ROUTING_AT_ONCE
    [s] = rig.sessions()
    rows = rig.inbound(s, "SELECT id FROM messages_in ORDER BY seq")
    assert sorted(r["id"].split(":")[0] for r in rows) == sorted(f"m{i}" for i in range(n))

    async def plain_burst() -> None:  # routing that does not wait keeps the arrival order
        await asyncio.gather(
            *(rig.host.route(make_event(f"p{i}", platform_id="chan", id=f"p{i}")) for i in range(n))
        )

    rig.host.router.on_intercept = _no_intercept
    rig.run(plain_burst())
    rows = rig.inbound(s, "SELECT id FROM messages_in WHERE id LIKE 'p%' ORDER BY seq")
    assert [r["id"].split(":")[0] for r in rows] == [f"p{i}" for i in range(n)]


def test_a_burst_leaves_the_loop_between_routing_slices(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routing work started in one pass of the event loop is bounded by time: a route
    queued behind a used slice waits for the next pass (a timer, a socket, a delivery runs
    in between), and the arrival order is still the order of the seqs. With a slice of 0
    every route after a pass's first waits for a pass of its own."""
    from carapace.host import router as router_mod

    monkeypatch.setattr(router_mod, "ROUTE_SLICE_S", 0.0)
    ag = rig.agent()
    rig.wire(rig.chat("chan"), ag)
    rig.run(rig.host.route(make_event("first", platform_id="chan", id="m0")))  # the session
    n = 6
    passes = 0
    started: list[tuple[str, int]] = []

    async def noting(event: Any) -> bool:
        started.append((event.message.id, passes))
        return False

    async def burst() -> None:
        nonlocal passes
        done = asyncio.ensure_future(asyncio.gather(
            *(rig.host.route(make_event(f"b{i}", platform_id="chan", id=f"b{i}")) for i in range(n))
        ))  # fmt: skip
        while not done.done():  # one step per pass of the loop
            passes += 1
            await asyncio.sleep(0)
        await done

    rig.host.router.on_intercept = noting
    rig.run(burst())
    assert [mid for mid, _ in started] == [f"b{i}" for i in range(n)]
    at = [p for _, p in started]
    assert len(set(at)) == n, at  # each in a pass of its own
    [s] = rig.sessions()
    rows = rig.inbound(s, "SELECT id FROM messages_in WHERE id LIKE 'b%' ORDER BY seq")
    assert [r["id"].split(":")[0] for r in rows] == [f"b{i}" for i in range(n)]


def test_a_route_cancelled_while_it_waits_for_its_turn_does_not_hold_up_later_ones(
    rig: Rig,
) -> None:
    """Routes go past their turn in the order they were admitted. One cancelled while it
    waits (its channel stopped) gives up its place: the routes behind it go on."""
    ag = rig.agent()
    rig.wire(rig.chat("chan"), ag)
    router = rig.host.router

    async def scenario() -> list[str]:
        router._slice_end = 0.0  # this pass's slice is used up: every route waits
        first = asyncio.ensure_future(rig.host.route(make_event("a", platform_id="chan", id="a")))
        later = asyncio.ensure_future(rig.host.route(make_event("b", platform_id="chan", id="b")))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done() and not later.done()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        router._slice_end = None  # the next pass
        result = await asyncio.wait_for(later, 10)
        return [r.message_id.split(":")[0] for r in result.routed]

    assert rig.run(scenario()) == ["b"]
    [s] = rig.sessions()
    assert [r["id"].split(":")[0] for r in rig.inbound(s, "SELECT id FROM messages_in")] == ["b"]


async def _no_intercept(event: Any) -> bool:
    return False
