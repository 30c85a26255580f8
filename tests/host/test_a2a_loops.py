"""Agent-to-agent loops are bounded (QA: two agents answered each other 270+ times).

The Host API drives real runners in process (mock provider, ``Runner.step``) against the
session folders the host makes; ``pump`` alternates runner steps and delivery passes until
nothing changes.
"""

from __future__ import annotations

import json
from typing import Any

from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.db.destinations import add_destination
from carapace.db.sessions import Session
from carapace.host.a2a_guard import A2A_MAX_HOPS, A2A_RATE_LIMIT, A2AGuard
from carapace.host.wake_files import wake_plan, write_wake_files
from carapace.jsonutil import dumps
from carapace.runner.config import RunnerConfig
from carapace.runner.loop import Runner
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.timefmt import iso
from carapace.watch import DirWatcher

CREATED_NOTE = 'Agent "beta" created. You can now message it with <message to="beta">...</message>.'


def _agents(rig: Rig, alpha_script: list[Any] | None = None) -> tuple[str, str, Session]:
    """alpha (wired to chat "chan") and beta, with destinations both ways; alpha's session."""
    a, b = rig.agent("alpha"), rig.agent("beta")
    add_destination(rig.db, a, "beta", "agent", b)
    add_destination(rig.db, b, "alpha", "agent", a)
    if alpha_script is not None:
        (rig.host.home.group_dir("alpha") / "mock-script.json").parent.mkdir(
            parents=True, exist_ok=True
        )
        (rig.host.home.group_dir("alpha") / "mock-script.json").write_text(dumps(alpha_script))
    mg = rig.chat("chan")
    rig.wire(mg, a)
    return a, b, _route(rig, "hello", "m1")


def _route(rig: Rig, text: str, mid: str) -> Session:
    rig.run(rig.host.route(make_event(text, platform_id="chan", id=mid)))
    [s] = [s for s in rig.sessions() if s.messaging_group_id is not None]
    return s


def _state(rig: Rig) -> tuple[int, int]:
    rows = delivered = 0
    for s in rig.sessions():
        if rig.paths(s).inbound.exists():
            rows += len(rig.inbound(s, "SELECT id FROM messages_in"))
            delivered += len(rig.delivered(s))
    return rows, delivered


def pump(rig: Rig, runners: dict[str, Runner], rounds: int = 200) -> int:
    """Runner steps + delivery until nothing changes; returns the rounds used."""
    for n in range(rounds):
        before = _state(rig)
        for s in rig.sessions():
            paths = rig.paths(s)
            if not paths.inbound.exists():
                continue
            r = runners.get(s.id)
            if r is None:
                plan = wake_plan(rig.db, rig.host.home, paths, s)  # as a spawn does
                write_wake_files(rig.host.home, plan)
                agent_dir = plan.agent_dir
                cfg = RunnerConfig.load(
                    paths.root, agent_dir, provider="mock", environ={"CARAPACE_TZ": "UTC"}
                )
                prov = create_provider(ProviderConfig(agent_dir=str(agent_dir)))
                r = runners[s.id] = Runner(cfg, prov, watcher=DirWatcher(use_inotify=False))
                r.start()
            while r.step():
                pass
            rig.run(rig.host.deliver_once(s.id))
        if _state(rig) == before:
            return n
    raise AssertionError(f"still busy after {rounds} rounds: the agents loop")


def a2a_rows(rig: Rig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in rig.sessions():
        if rig.paths(s).inbound.exists():
            out += rig.inbound(s, "SELECT * FROM messages_in WHERE id LIKE 'a2a-%' ORDER BY seq")
    return out


def close(runners: dict[str, Runner]) -> None:
    for r in runners.values():
        r.close()


def test_note_quoting_message_markup_starts_no_loop(rig: Rig) -> None:
    """The QA case: the create_agent note mentions <message to="beta">; the default mock
    quotes it. Nothing goes to beta, and the answer goes to the user's chat."""
    _, b, s = _agents(rig)
    runners: dict[str, Runner] = {}
    try:
        pump(rig, runners)
        rig.host.sessions.notify_agent(s, CREATED_NOTE, now=rig.clock.now())
        pump(rig, runners)
    finally:
        close(runners)
    assert a2a_rows(rig) == []
    assert not [x for x in rig.sessions() if x.agent_group_id == b]
    texts = rig.channel.texts()
    assert len(texts) == 2 and '‹message to="beta"›' in texts[1]
    outs = rig.inbound(s, "SELECT * FROM delivered")
    assert all(d["status"] == "delivered" for d in outs)


def test_two_agents_answering_each_other_stop_at_the_hop_limit(rig: Rig) -> None:
    # alpha opens the chain once; after that both agents answer every message (bare text
    # goes back to the agent that wrote), which on its own would never end
    script = [{"match": "(?i)^start", "reply": '<message to="beta">hello beta</message>'}]
    _, _, s = _agents(rig, alpha_script=script)
    runners: dict[str, Runner] = {}
    try:
        pump(rig, runners)
        _route(rig, "start talking to beta", "m2")
        pump(rig, runners)
    finally:
        close(runners)
    rows = a2a_rows(rig)
    assert len(rows) == A2A_MAX_HOPS
    assert sorted(json.loads(r["content"])["a2aHops"] for r in rows) == list(
        range(1, A2A_MAX_HOPS + 1)
    )
    failed = [d for d in rig.delivered(s) if d["status"] == "failed"]
    assert len(failed) == 1  # alpha's ninth message
    notes = rig.inbound(s, "SELECT content FROM messages_in WHERE id LIKE 'sys-%'")
    assert len(notes) == 1 and "chain stopped" in json.loads(notes[0]["content"])["text"]
    # alpha's answer to the note went to the user, not to beta and not to itself
    assert "chain stopped" in rig.channel.texts()[-1]


def test_answer_to_a_stop_note_is_stopped_silently(rig: Rig) -> None:
    _, b, s = _agents(rig)
    parent = "a2a-in-8"
    rig.host.sessions.write_message(s, {
        "id": parent, "kind": "chat", "timestamp": iso(rig.clock.now()), "platform_id": b,
        "channel_type": "agent", "content": dumps({"text": "x", "a2aHops": A2A_MAX_HOPS}),
    }, now=rig.clock.now())  # fmt: skip
    # the agent claims hop 0: the host's count wins
    rig.reply(s, {"text": "again", "a2aHops": 0}, channel_type="agent", platform_id=b,
              in_reply_to=parent, id="o9")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)}["o9"] == "failed"
    [note] = rig.inbound(s, "SELECT * FROM messages_in WHERE id LIKE 'sys-%'")
    assert json.loads(note["content"])["a2aHops"] == A2A_MAX_HOPS + 1
    rig.reply(s, {"text": "ok then"}, channel_type="agent", platform_id=b,
              in_reply_to=note["id"], id="o10")  # fmt: skip
    rig.clock.advance(3600)  # even much later: an answer to the note is still stopped
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)}["o10"] == "failed"
    assert len(rig.inbound(s, "SELECT * FROM messages_in WHERE id LIKE 'sys-%'")) == 1
    assert not [x for x in rig.sessions() if x.agent_group_id == b]


def test_rate_guard_per_session(rig: Rig) -> None:
    _, b, s = _agents(rig)
    for i in range(A2A_RATE_LIMIT + 5):
        rig.reply(s, {"text": f"n{i}"}, channel_type="agent", platform_id=b, id=f"o{i:02d}")
    rig.run(rig.host.deliver_once(s.id))
    status = [d["status"] for d in rig.delivered(s)]
    assert status.count("delivered") == A2A_RATE_LIMIT and status.count("failed") == 5
    assert len(a2a_rows(rig)) == A2A_RATE_LIMIT
    notes = rig.inbound(s, "SELECT content FROM messages_in WHERE id LIKE 'sys-%'")
    assert len(notes) == 1 and "rate limit" in json.loads(notes[0]["content"])["text"]
    rig.clock.advance(61)
    rig.reply(s, {"text": "later"}, channel_type="agent", platform_id=b, id="o99")
    rig.run(rig.host.deliver_once(s.id))
    assert len(a2a_rows(rig)) == A2A_RATE_LIMIT + 1


def test_guard_limits_are_settable(rig: Rig) -> None:
    rig.host.delivery.a2a_guard = A2AGuard(max_hops=2, rate_limit=100)
    script = [{"match": "(?i)^start", "reply": '<message to="beta">hello beta</message>'}]
    _agents(rig, alpha_script=script)
    runners: dict[str, Runner] = {}
    try:
        _route(rig, "start", "m2")
        pump(rig, runners)
    finally:
        close(runners)
    assert len(a2a_rows(rig)) == 2
