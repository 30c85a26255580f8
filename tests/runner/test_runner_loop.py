"""The poll loop in process: batching, trigger gate, acks, /clear, errors, resume."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from carapace.db.session import SessionPaths
from carapace.errors import ProviderError
from carapace.runner.config import RunnerConfig
from carapace.runner.loop import Runner
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers.base import Message, ToolSpec, Turn
from carapace.runner.setup import build_workspace
from carapace.runner.tools import TurnAbandoned
from carapace.testing.sessions import (
    agent_dest,
    channel_dest,
    make_agent_dir,
    make_session,
    read_acks,
    read_conversation,
    read_outbound,
    set_destinations,
    write_chat,
    write_message,
)
from carapace.timefmt import iso
from carapace.watch import DirWatcher

DESTS = [channel_dest("family", "telegram", "chat-1"), agent_dest("helper", "ag-helper")]
ROUTING = ("telegram", "chat-1", None)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.paths: SessionPaths = make_session(tmp_path, destinations=DESTS, routing=ROUTING)
        self.runners: list[Runner] = []

    def runner(
        self,
        *,
        script: list[Any] | None = None,
        config: dict[str, Any] | None = None,
        provider: Any = None,
        workspace: bool = False,
    ) -> Runner:
        agent_dir = make_agent_dir(self.tmp_path, config=config or {}, mock_script=script)
        cfg = RunnerConfig.load(
            self.paths.root, agent_dir, provider="mock", environ={"CARAPACE_TZ": "UTC"}
        )
        prov = provider or create_provider(ProviderConfig(agent_dir=str(agent_dir)))
        ws = build_workspace(cfg) if workspace else None
        r = Runner(cfg, prov, watcher=DirWatcher(use_inotify=False), workspace=ws)
        r.start()
        self.runners.append(r)
        return r

    def out(self) -> list[dict[str, Any]]:
        return read_outbound(self.paths)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for r in harness.runners:
        r.close()


class Recorder:
    """A provider that records prompts and answers with a fixed text (or raises)."""

    name = "recorder"

    def __init__(self, reply: str = "ok", error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error
        self.calls: list[list[Message]] = []
        self.systems: list[str] = []

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        self.calls.append(list(messages))
        self.systems.append(system)
        if self.error is not None:
            raise self.error
        return Turn(text=self.reply)


def test_one_message_one_reply(h: Harness) -> None:
    write_chat(h.paths, "what is 6*7", id="m1")
    r = h.runner(script=[{"match": "6\\*7", "reply": "42"}])
    assert r.step()
    [out] = h.out()
    assert out["seq"] % 2 == 1
    assert out["content"] == {"text": "42"}
    assert (out["platform_id"], out["channel_type"], out["thread_id"]) == (
        "chat-1",
        "telegram",
        None,
    )
    assert out["in_reply_to"] == "m1" and out["kind"] == "chat"
    assert read_acks(h.paths) == {"m1": "completed"}
    assert not r.step()


def test_finished_rows_the_host_has_not_marked_yet_are_not_read_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host copies acks into ``inbound.db`` in batches (64, or after a second), so a
    finished row stays ``pending`` there meanwhile. The runner looks up its ack once; from
    then on a poll neither decodes it nor asks ``outbound.db`` about it again. A row whose
    turn was abandoned (its claim released, not finished) is taken again."""
    write_chat(h.paths, "one", id="m1")
    write_chat(h.paths, "two", id="m2", platform_id="other-chat")  # a batch of its own
    r = h.runner(provider=Recorder())
    looked_up: list[list[str]] = []
    real = r.outbound.acked

    def acked(ids: Any) -> dict[str, str]:
        ids = list(ids)
        looked_up.append(ids)
        return real(ids)

    monkeypatch.setattr(r.outbound, "acked", acked)
    assert r.step() and r.step()
    assert read_acks(h.paths) == {"m1": "completed", "m2": "completed"}
    assert not r.step()  # both still pending in inbound.db: found finished once more
    assert not r.step()
    assert looked_up[-1] == []  # ... and not again
    write_chat(h.paths, "three", id="m3")
    rec = r.agent.provider
    assert isinstance(rec, Recorder)
    rec.error = TurnAbandoned()  # the turn is abandoned: its claim released, not finished
    looked_up.clear()
    assert r.step()
    assert looked_up == [["m3"]]
    assert "m3" not in read_acks(h.paths)
    rec.error = None
    assert r.step()  # taken again
    assert looked_up == [["m3"], ["m3"]]
    assert read_acks(h.paths)["m3"] == "completed"


def test_a_finished_row_the_host_has_marked_is_no_longer_skipped_by_id(h: Harness) -> None:
    """Once the host has copied a finished row's ack (the row is not pending in
    ``inbound.db`` any more), the runner stops carrying its id: with nothing left to skip
    a poll reads the due rows whole in one query, not their ids and then the rows."""

    def host_copies(*ids: str) -> None:
        conn = sqlite3.connect(h.paths.inbound)
        conn.executemany("UPDATE messages_in SET status='completed' WHERE id=?",
                         [(i,) for i in ids])  # fmt: skip
        conn.commit()
        conn.close()

    r = h.runner(provider=Recorder())
    write_chat(h.paths, "one", id="m1")
    assert r.step()
    write_chat(h.paths, "two", id="m2")
    assert r.step()  # the poll found m1 finished, still pending: skipped by id from now on
    assert r._finished == {"m1"}
    host_copies("m1")
    write_chat(h.paths, "three", id="m3")
    assert r.step()  # m1 is not pending any more: forgotten (m2 found finished)
    assert r._finished == {"m2"}
    host_copies("m2", "m3")
    write_chat(h.paths, "four", id="m4")
    assert r.step()  # m2 forgotten: nothing left to skip
    assert r._finished == set()
    write_chat(h.paths, "five", id="m5")
    assert r.inbound._conn is not None
    statements: list[str] = []
    r.inbound._conn.set_trace_callback(statements.append)
    assert r.step()
    reads = [s for s in statements if "FROM messages_in WHERE status" in s]
    assert reads and all(s.startswith("SELECT *") for s in reads), reads  # one query


def test_two_messages_one_batch_one_reply(h: Harness) -> None:
    rec = Recorder()
    write_chat(h.paths, "a", id="m1")
    write_chat(h.paths, "b", id="m2")
    r = h.runner(provider=rec)
    r.step()
    assert len(h.out()) == 1 and len(rec.calls) == 1
    assert "<messages>" in rec.calls[0][-1]["content"]
    assert read_acks(h.paths) == {"m1": "completed", "m2": "completed"}


def test_trigger_gate_and_context(h: Harness) -> None:
    rec = Recorder()
    write_chat(h.paths, "chatter", id="c1", trigger=0)
    r = h.runner(provider=rec)
    assert not r.step()
    assert rec.calls == [] and read_acks(h.paths) == {}
    write_chat(h.paths, "@bot hi", id="t1")
    assert r.step()
    prompt = rec.calls[0][-1]["content"]
    assert "chatter" in prompt and "@bot hi" in prompt
    assert read_acks(h.paths) == {"c1": "completed", "t1": "completed"}
    assert h.out()[0]["in_reply_to"] == "t1"


def test_many_context_rows_never_starve_the_trigger(h: Harness) -> None:
    # W-4: 10 trigger=0 rows newer than the mention; W-5: older rows are not hidden
    write_chat(h.paths, "mention", id="t1")
    for i in range(12):
        write_chat(h.paths, f"chatter {i}", id=f"c{i}", trigger=0)
    rec = Recorder()
    r = h.runner(provider=rec, config={"maxMessagesPerPrompt": 5})
    assert r.step()
    assert "mention" in rec.calls[0][-1]["content"]
    acks = read_acks(h.paths)
    assert acks["t1"] == "completed" and len(acks) == 5
    assert not r.step()  # the rest is context, waiting for a trigger


def test_oldest_first_and_nothing_hidden(h: Harness) -> None:
    for i in range(12):
        write_chat(h.paths, f"msg {i}", id=f"m{i}")
    rec = Recorder()
    r = h.runner(provider=rec, config={"maxMessagesPerPrompt": 10})
    r.step()
    assert "msg 0" in rec.calls[0][-1]["content"] and "msg 10" not in rec.calls[0][-1]["content"]
    r.step()  # acks are not synced to inbound yet: the window must still move on
    assert "msg 10" in rec.calls[1][-1]["content"]
    assert len(read_acks(h.paths)) == 12


def test_other_origin_waits_for_the_next_batch(h: Harness) -> None:
    rec = Recorder()
    write_chat(h.paths, "from chat", id="m1")
    write_message(
        h.paths, kind="chat", id="a1", content={"text": "from agent"},
        channel_type="agent", platform_id="ag-helper",
    )  # fmt: skip
    r = h.runner(provider=rec)
    r.step()
    r.step()
    outs = h.out()
    assert [(o["channel_type"], o["platform_id"], o["in_reply_to"]) for o in outs] == [
        ("telegram", "chat-1", "m1"),
        ("agent", "ag-helper", "a1"),
    ]
    assert 'from="helper"' in rec.calls[1][-1]["content"]


def test_process_after_compared_as_datetimes(h: Harness) -> None:
    now = datetime.now(UTC)
    future = now + timedelta(hours=1)
    write_message(h.paths, kind="task", id="iso", content={"prompt": "a"},
                  process_after=iso(future))  # fmt: skip
    write_message(h.paths, kind="task", id="sql", content={"prompt": "b"},
                  process_after=future.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
    write_message(h.paths, kind="task", id="due", content={"prompt": "c"},
                  process_after=(now - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
    rec = Recorder()
    r = h.runner(provider=rec)
    r.step(now)
    assert set(read_acks(h.paths)) == {"due"}
    assert r.inbound.next_due(now) is not None
    r.step(future + timedelta(seconds=1))
    assert set(read_acks(h.paths)) == {"due", "iso", "sql"}


def test_pending_with_ids_to_skip_reads_the_same_rows(h: Harness) -> None:
    """With finished ids to skip, the ids are read first and only the rest whole: the same
    rows, in seq order, with the same due filter, as the one-step read."""
    from carapace.runner.inbound import Inbound

    now = datetime.now(UTC)
    for name in ("m5", "m4", "m3", "m2", "m1"):  # seq order is not the ids' order
        write_chat(h.paths, name, id=name)
    write_message(h.paths, kind="task", id="later", content={"prompt": "x"},
                  process_after=iso(now + timedelta(hours=1)))  # fmt: skip
    write_message(h.paths, kind="task", id="due", content={"prompt": "y"},
                  process_after=iso(now - timedelta(minutes=1)))  # fmt: skip
    inbound = Inbound(h.paths)
    try:
        every = inbound.poll(now).rows
        assert [r.id for r in every] == ["m5", "m4", "m3", "m2", "m1", "due"]
        for skip in ({"m2", "m4", "due", "not-there", "nor-this"},  # ids, then rows
                     {"m2", "m4", "due"}, {"m4"}):  # a few: rows, dropped after  # fmt: skip
            some = inbound.poll(now, skip=skip)
            assert some.rows == [r for r in every if r.id not in skip]
            assert some.pending == {r.id for r in every}
        assert inbound.poll(now, skip={r.id for r in every}).rows == []
        assert inbound.poll(now, skip={"m1", "due"}).rows[-1].id == "m2"
        assert not inbound._conn.in_transaction  # type: ignore[union-attr]
    finally:
        inbound.close()


def test_on_wake_only_on_first_poll(h: Harness) -> None:
    rec = Recorder()
    r = h.runner(provider=rec)
    assert not r.step()  # first poll, nothing there
    write_message(h.paths, kind="chat", id="w1", content={"text": "wake"}, on_wake=1,
                  channel_type="telegram", platform_id="chat-1")  # fmt: skip
    assert not r.step()
    r2 = h.runner(provider=rec)
    assert r2.step()
    assert read_acks(h.paths) == {"w1": "completed"}


def test_on_wake_rows_beyond_the_first_batch_are_kept(h: Harness) -> None:
    for i in range(3):
        write_message(h.paths, kind="chat", id=f"w{i}", content={"text": f"w{i}"}, on_wake=1,
                      channel_type="telegram", platform_id="chat-1")  # fmt: skip
    r = h.runner(provider=Recorder(), config={"maxMessagesPerPrompt": 2})
    r.step()
    r.step()
    assert read_acks(h.paths) == {f"w{i}": "completed" for i in range(3)}


def test_provider_error_tells_the_user_and_fails_the_ack(h: Harness) -> None:
    write_chat(h.paths, "hello", id="m1")
    r = h.runner(provider=Recorder(error=ProviderError("HTTP 529 overloaded\nretry later")))
    r.step()
    [out] = h.out()
    assert out["content"]["text"] == (
        "Sorry — the model provider failed: HTTP 529 overloaded retry later"
    )
    assert out["in_reply_to"] == "m1" and out["platform_id"] == "chat-1"
    assert read_acks(h.paths) == {"m1": "failed"}
    assert r.agent.conversation == []


def test_unknown_provider_still_answers(h: Harness) -> None:
    write_chat(h.paths, "hello", id="m1")
    agent_dir = make_agent_dir(h.tmp_path)
    cfg = RunnerConfig.load(h.paths.root, agent_dir, provider="bogus", environ={})
    from carapace.runner.setup import build_provider

    prov, err = build_provider(cfg)
    assert prov is None and err is not None and "Unknown provider: bogus" in err
    r = Runner(cfg, None, provider_error=err, watcher=DirWatcher(use_inotify=False))
    h.runners.append(r)
    r.start()
    r.step()
    assert "Unknown provider: bogus" in h.out()[0]["content"]["text"]


def test_clear_command(h: Harness) -> None:
    rec = Recorder()
    write_chat(h.paths, "remember x", id="m1")
    r = h.runner(provider=rec)
    r.step()
    assert read_conversation(h.paths)
    write_chat(h.paths, "/clear", id="m2")
    r.step()
    assert h.out()[-1]["content"] == {"text": "Session cleared."}
    assert h.out()[-1]["in_reply_to"] == "m2"
    assert read_conversation(h.paths) == []  # saved as empty (not rebuilt at a restart)
    assert len(rec.calls) == 1 and read_acks(h.paths)["m2"] == "completed"
    write_chat(h.paths, "/clearance", id="m3")
    r.step()
    assert len(rec.calls) == 2 and len(rec.calls[1]) == 1  # fresh conversation


def test_conversation_resumes_after_restart(h: Harness) -> None:
    rec = Recorder()
    write_chat(h.paths, "first", id="m1")
    h.runner(provider=rec).step()
    write_chat(h.paths, "second", id="m2")
    r2 = h.runner(provider=rec)
    r2.step()
    roles = [m["role"] for m in rec.calls[1]]
    assert roles == ["user", "assistant", "user"]
    transcript = r2.paths.root / "conversations" / "sess-test.jsonl"
    assert len(transcript.read_text().splitlines()) == 4


def test_stale_claims_are_recovered(h: Harness) -> None:
    write_chat(h.paths, "hello", id="m1")
    r = h.runner(provider=Recorder())
    r.outbound.claim(["m1"])
    assert not r.step()  # our own claim hides it
    r2 = h.runner(provider=Recorder())
    assert r2.step()
    assert read_acks(h.paths) == {"m1": "completed"}


def test_late_question_answer_is_acked(h: Harness) -> None:
    write_message(h.paths, kind="system", id="qr-1", content={
        "type": "question_response", "questionId": "msg-old", "selectedOption": "yes",
        "userId": "u"})  # fmt: skip
    rec = Recorder()
    r = h.runner(provider=rec)
    assert r.step()
    assert read_acks(h.paths) == {"qr-1": "completed"} and rec.calls == []


def test_message_blocks_and_internal(h: Harness) -> None:
    write_chat(h.paths, "older", id="old", thread_id="thread-old")
    write_chat(h.paths, "hi", id="m-new", thread_id="thread-new")
    text = (
        "<internal>thinking</internal>"
        '<message to="family">to family <internal>secret</internal></message>'
        '<message to="nobody">lost</message>'
        '<message to="helper">to helper</message>'
    )
    h.runner(provider=Recorder(text)).step()
    notes = [o for o in h.out() if o["kind"] == "system"]
    outs = [o for o in h.out() if o["kind"] != "system"]
    assert [o["content"]["text"] for o in outs] == ["to family", "to helper"]
    # the unknown name is not sent, and the host is asked to tell the agent (issue 14)
    [note] = notes
    assert note["content"]["action"] == "unknown_destination"
    assert note["content"]["to"] == "nobody" and "family" in note["content"]["known"]
    assert (outs[0]["thread_id"], outs[0]["in_reply_to"]) == ("thread-new", "m-new")
    assert (outs[1]["channel_type"], outs[1]["platform_id"], outs[1]["thread_id"]) == (
        "agent", "ag-helper", None,
    )  # fmt: skip
    assert outs[1]["in_reply_to"] == "old"  # no inbound from helper: the batch's trigger


def test_plain_reply_goes_to_origin_thread(h: Harness) -> None:
    write_chat(h.paths, "hi", id="m1", thread_id="t-9")
    h.runner(provider=Recorder("hello back")).step()
    [out] = h.out()
    assert (out["thread_id"], out["content"]["text"]) == ("t-9", "hello back")


def test_system_prompt_has_memory_and_destinations(h: Harness) -> None:
    rec = Recorder()
    (h.tmp_path / "groups" / "global").mkdir(parents=True)
    (h.tmp_path / "groups" / "global" / "CLAUDE.md").write_text("GLOBAL RULES")
    write_chat(h.paths, "hi")
    r = h.runner(provider=rec, config={"assistantName": "Andy"})
    (h.tmp_path / "groups" / "main" / "CLAUDE.local.md").write_text("LOCAL MEMORY")
    r.step()
    system = rec.systems[0]
    assert "# You are Andy" in system and "LOCAL MEMORY" in system and "GLOBAL RULES" in system
    assert "- `family`" in system and "- `helper`" in system


def test_tool_round_cap(h: Harness) -> None:
    script = [{"match": "loop", "steps": [
        {"tool_calls": [{"name": "list_tasks", "arguments": {}}]} for _ in range(30)]}]  # fmt: skip
    write_chat(h.paths, "loop please", id="m1")
    r = h.runner(script=script, config={"settings": {"max_tool_rounds": 3}})
    r.step()
    assert "stopped after 3 rounds" in h.out()[0]["content"]["text"]
    assert read_acks(h.paths) == {"m1": "completed"}


def test_workspace_tools_are_offered(h: Harness) -> None:
    script = [{"match": "write", "tool_calls": [
        {"name": "write_file", "arguments": {"path": "notes.txt", "content": "hello"}}],
        "reply": "done: {tool_result}"}]  # fmt: skip
    write_chat(h.paths, "write it", id="m1")
    r = h.runner(script=script, workspace=True)
    names = [s.name for s in r.toolbox.specs()]
    assert names[:15][0] == "send_message" and "read_file" in names and "bash" not in names
    r.step()
    assert (h.tmp_path / "groups" / "main" / "notes.txt").read_text() == "hello"
    assert h.out()[0]["content"]["text"].startswith("done:")


class _Died(BaseException):
    """The runner process dies mid-turn (nothing after this runs)."""


class SendThenDie:
    """Calls send_message, then (on the next model call) dies once; later tries finish."""

    name = "send-then-die"

    def __init__(self, die: bool) -> None:
        self.die = die

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        from carapace.runner.providers.base import ToolCall

        if messages[-1].get("role") == "user":
            return Turn(text="", tool_calls=(ToolCall("c1", "send_message", {"text": "on it"}),))
        if self.die:
            raise _Died()
        return Turn(text="done")


def test_retried_turn_does_not_send_its_tool_message_again(h: Harness) -> None:
    write_chat(h.paths, "please", id="m1")
    with pytest.raises(_Died):
        h.runner(provider=SendThenDie(die=True)).step()
    assert [o["content"]["text"] for o in h.out()] == ["on it"]
    r2 = h.runner(provider=SendThenDie(die=False))  # start(): the dead runner's claim released
    assert r2.step()
    # the retried turn's send_message wrote the same row id: nothing new, the final reply only
    assert [o["content"]["text"] for o in h.out()] == ["on it", "done"]
    assert read_acks(h.paths) == {"m1": "completed"}


def test_batch_reply_names_every_message_of_the_batch(h: Harness) -> None:
    write_chat(h.paths, "first", id="m1")
    write_chat(h.paths, "second", id="m2")
    h.runner(provider=Recorder("both")).step()
    [out] = h.out()
    assert out["in_reply_to"] == "m1" and out["content"]["answers"] == ["m1", "m2"]


# --- what a turn reads of inbound.db (issue 19) -----------------------------------------------


class Tracing(Recorder):
    """A Recorder that marks its call in the runner's statement trace (and may act then)."""

    def __init__(self, trace: list[str], reply: str, during: Any = None) -> None:
        super().__init__(reply)
        self.trace = trace
        self.during = during

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        self.trace.append("-- model call --")
        if self.during is not None:
            self.during()
        return super().complete(system, messages, tools)


def _traced(r: Runner) -> list[str]:
    r.inbound.max_seq()  # the connection is open
    assert r.inbound._conn is not None
    trace: list[str] = []
    r.inbound._conn.set_trace_callback(trace.append)
    return trace


def test_a_turn_reads_inbound_once_before_its_model_call(h: Harness) -> None:
    """The rows, the destinations, the session's routing and the highest seq are read in
    one read transaction (each read of a file the host commits to may wait out a commit),
    and a plain reply reads nothing of inbound.db after the model call."""
    write_chat(h.paths, "hi", id="m1")
    r = h.runner(provider=Recorder("first"))
    assert r.step()  # (the first turn also finds the tables: looked up once per file)
    write_chat(h.paths, "again", id="m2")
    trace = _traced(r)
    r.agent.provider = provider = Tracing(trace, "hello back")
    assert r.step()
    before = trace[: trace.index("-- model call --")]
    after = trace[trace.index("-- model call --") + 1 :]
    assert [s.split()[0] for s in before] == ["BEGIN", *["SELECT"] * 4, "COMMIT"]
    assert "messages_in" in before[1]
    assert "FROM destinations" in before[2] and "session_routing" in before[3]
    assert "MAX(seq)" in before[4]  # the inbound side of the reply's seq (compat.md D4)
    assert after == []  # writing the reply reads nothing of the host's file
    assert [o["content"]["text"] for o in h.out()] == ["first", "hello back"]
    assert "- `family`" in provider.systems[0]  # the prompt has the polled list


def test_an_idle_poll_reads_only_the_queue(h: Harness) -> None:
    r = h.runner(provider=Recorder())
    trace = _traced(r)
    assert not r.step()
    assert not [s for s in trace if "destinations" in s or "session_routing" in s]


def test_a_destination_added_during_the_turn_is_found_by_its_block(h: Harness) -> None:
    """A reply's ``<message to>`` blocks are resolved against the destinations as they are
    when it is written: one made during the turn (an agent created by a tool call, projected
    by the host meanwhile) is found."""
    write_chat(h.paths, "make a helper and greet it", id="m1")
    added = [*DESTS, channel_dest("newcomer", "telegram", "chat-9")]
    provider = Recorder('<message to="newcomer">welcome</message>')
    r = h.runner(provider=provider)
    trace = _traced(r)
    r.agent.provider = Tracing(
        trace, provider.reply, during=lambda: set_destinations(h.paths, added)
    )
    assert r.step()
    outs = [o for o in h.out() if o["kind"] == "chat"]
    assert [(o["platform_id"], o["content"]["text"]) for o in outs] == [("chat-9", "welcome")]
    assert not [o for o in h.out() if o["kind"] == "system"]  # not an unknown destination


def test_a_reply_seq_follows_the_rows_the_turn_saw(h: Harness) -> None:
    """The inbound side of a reply's seq is the highest seq the turn's poll saw (compat.md
    D4): above every row it answers, odd, unique; a row the host stores during the turn
    is not waited for."""
    write_chat(h.paths, "first", id="m1")
    write_chat(h.paths, "second", id="m2")
    r = h.runner(provider=Recorder())
    trace = _traced(r)
    r.agent.provider = Tracing(trace, "answer", during=lambda: write_chat(h.paths, "late", id="m3"))
    assert r.step()
    with contextlib.closing(sqlite3.connect(str(h.paths.inbound))) as conn:
        seqs = dict(conn.execute("SELECT id, seq FROM messages_in").fetchall())
    [out] = h.out()
    assert out["seq"] % 2 == 1 and out["seq"] > max(seqs["m1"], seqs["m2"])
    assert out["seq"] not in seqs.values()
    assert out["seq"] < seqs["m3"]  # stored while the turn ran: after it in seq order
    assert r.step()  # the late row is the next turn's; its reply's seq is above it
    assert h.out()[-1]["seq"] > seqs["m3"]
