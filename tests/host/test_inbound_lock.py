"""An agent keeping its ``inbound.db`` locked must not stall the host's event loop (the
agent is hostile). The agent may read that file, so it can hold a read transaction open
for as long as it likes; no commit to the file can finish meanwhile. Nothing the host does
on its event loop may wait for that: the notes it writes to the agent, the agent's own
task actions, a message routed to it, another chat's message, a delivery pass and a
sweep all go on while the lock is held, and everything reaches the file once it goes.
(``test_outbound_lock.py`` is the same attack on ``outbound.db``.)"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from host_rig import Rig

from carapace.channels.fake import make_event
from carapace.db.destinations import add_destination
from carapace.db.sessions import Session
from carapace.host.ingest import BATCH_MAX, LONE_WAIT_S
from carapace.jsonutil import dumps
from carapace.testing.loop_ticks import LongestGap
from carapace.timefmt import iso, sqlite_ts


def _texts(rig: Rig, s: Session) -> list[str]:
    return [r["content"] for r in rig.inbound(s, "SELECT content FROM messages_in ORDER BY seq")]


def _ids(rig: Rig, s: Session) -> list[str]:
    return [r["id"].split(":")[0] for r in rig.inbound(s)]


@contextmanager
def _agents_lock(rig: Rig, s: Session) -> Iterator[Callable[[], None]]:
    """What a hostile agent may do with the file it can read: a read transaction (a
    shared lock) kept open until the block ends, or the ``let_go`` it yields is called."""
    conn = sqlite3.connect(str(rig.paths(s).inbound), isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()

    def let_go() -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    try:
        yield let_go
    finally:
        let_go()
        conn.close()


def test_a_read_lock_kept_on_inbound_db_never_stalls_the_loop(rig: Rig) -> None:
    s = rig.one_chat_session("chan")  # its runner is live: the host keeps a connection
    assert rig.host.pool.is_running(s.id)
    sched = {"action": "schedule_task", "taskId": "task-1", "prompt": "digest", "script": None,
             "processAfter": "2030-03-01T13:00:00.000Z", "recurrence": "0 9 * * *",
             "platformId": "chan", "channelType": "fake", "threadId": None}  # fmt: skip
    rig.reply(s, sched, kind="system")
    rig.run(rig.host.deliver_once(s.id))
    other_ag = rig.agent("other")
    rig.wire(rig.chat("other"), other_ag)
    rig.run(rig.host.route(make_event("hello", platform_id="other", id="o1")))
    [s2] = [x for x in rig.sessions() if x.id != s.id]
    rig.host.sessions.ingest.lone_wait_s = LONE_WAIT_S  # type: ignore[union-attr]
    # what the agent wrote before it took the lock: a task action, and a message to a
    # destination it does not have (the host answers with a note)
    rig.reply(s, {"action": "pause_task", "taskId": "task-1"}, kind="system")
    rig.reply(s, {"action": "unknown_destination", "to": "nowhere", "known": []}, kind="system")

    async def passes(let_go: Callable[[], None]) -> float:
        async with LongestGap() as gap:
            # the lock goes after a while; a loop that waited in SQLite never gets there
            asyncio.get_running_loop().call_later(0.5, let_go)
            rig.host.sessions.notify_agent(s, "a note from the host", now=rig.clock.now())
            await rig.host.route(make_event("held", platform_id="chan", id="h1"), settle=False)
            await rig.host.route(make_event("meanwhile", platform_id="other", id="o2"),
                                 settle=False)  # fmt: skip
            await rig.host.deliver_once(s.id)  # the task action and the note, on the lock
            rig.clock.advance(1)
            await rig.host.sweep_once()
        return gap.longest

    with _agents_lock(rig, s) as let_go:
        stall = rig.run(asyncio.wait_for(passes(let_go), 30))
    assert stall < 0.4, f"the event loop stalled {stall:.2f} s on the agent's lock"
    rig.run(asyncio.wait_for(rig.host.sessions.settle(through_failures=False), 30))
    rig.run(asyncio.wait_for(rig.host.sessions.writers.drain(), 30))
    ids = _ids(rig, s)
    assert "h1" in ids and "task-1" in ids
    texts = "\n".join(_texts(rig, s))
    assert "a note from the host" in texts
    assert 'no destination named \\"nowhere\\"' in texts
    assert rig.inbound(s, "SELECT status FROM messages_in WHERE id='task-1'") == [
        {"status": "paused"}
    ]
    # the action waited for the lock (on the writer thread): no attempt of it failed
    errors = rig.inbound(s, "SELECT last_error FROM carapace_delivery WHERE last_error IS NOT NULL")
    assert not [e for e in errors if "locked" in str(e["last_error"])], errors
    assert {"o1", "o2"} <= set(_ids(rig, s2))


def test_the_task_sweep_never_waits_for_the_agents_lock(rig: Rig) -> None:
    """The sweep's task hook hands a due series over to its next occurrence with a write
    on the event loop; under the agent's lock that write gives up at once (the sweep looks
    again later) instead of waiting, and the series moves on once the lock is gone."""
    s = rig.one_chat_session("chan")
    now = rig.clock.now()
    rig.host.sessions.write_message(s, {
        "id": "task-1", "kind": "task", "timestamp": sqlite_ts(now),
        "process_after": iso(now - timedelta(minutes=1)), "recurrence": "* * * * *",
        "series_id": "task-1", "platform_id": "chan", "channel_type": "fake",
        "content": dumps({"prompt": "p", "script": None}),
    }, now=now, due=iso(now))  # fmt: skip
    rig.ack(s, "task-1", "completed")  # the runner ran it: the series is due to move on

    async def sweep() -> float:
        started = time.perf_counter()
        rig.clock.advance(1)
        await rig.host.sweep_once()
        return time.perf_counter() - started

    with _agents_lock(rig, s):
        took = rig.run(asyncio.wait_for(sweep(), 30))
        assert _ids(rig, s).count("task-1") == 1 and len(
            [i for i in _ids(rig, s) if i.startswith("task-1@")]) == 0  # fmt: skip
    assert took < 1.0, f"the sweep waited {took:.2f} s on the agent's lock"
    rig.clock.advance(120)
    rig.run(rig.host.sweep_once())
    assert [i for i in _ids(rig, s) if i.startswith("task-1@")]


def test_one_agents_lock_never_holds_up_the_sweep_of_the_other_sessions(rig: Rig) -> None:
    """The sweep looks at the due sessions one after the other. A session whose delivery
    pass is held up (here its agent's lock: the pass's first write waits on the session's
    writer thread until the busy deadline) is waited for only briefly; the pass goes on by
    itself and the sweep goes on to the next session, whose reply goes out in the same
    pass. One hostile agent per pass cost every other session 5 s before."""
    ag = rig.agent()
    for chat in ("chan-a", "chan-b"):
        rig.wire(rig.chat(chat), ag)
        rig.run(rig.host.route(make_event("hi", platform_id=chat, id=f"m-{chat}")))
    by_chat = {s.messaging_group_id: s for s in rig.sessions()}
    a, b = sorted(by_chat.values(), key=lambda s: rig.inbound(s)[0]["platform_id"])
    rig.reply(b, {"text": "answer"}, channel_type="fake", platform_id="chan-b")
    now = rig.clock.now()
    for s in (a, b):
        rig.host.sessions.work.mark(s.id, iso(now))

    async def sweep() -> float:
        started = time.perf_counter()
        await rig.host.sweep_once(now)
        return time.perf_counter() - started

    with _agents_lock(rig, a):
        took = rig.run(asyncio.wait_for(sweep(), 30))
        assert [d.platform_id for d in rig.channel.deliveries] == ["chan-b"]  # went out
        rig.settle()  # (a's pass, still waiting on its lock, is the host's to finish)
    assert took < 1.0, f"the sweep waited {took:.2f} s on one agent's lock"


def test_a_preview_is_recorded_without_waiting_for_the_agents_lock(rig: Rig) -> None:
    """A reply shown as it is written is recorded in ``inbound.db`` once its preview is
    posted (a restarted host edits the reply into it). Under the agent's lock the record
    waits on the session's writer thread, not on the event loop, and is written once the
    lock goes."""
    rig.channel.streams_replies = True
    clock = [1000.0]
    rig.host.previews.monotonic = lambda: clock[0]
    s = rig.one_chat_session("chan")
    preview = rig.paths(s).outbox / ".preview.json"

    def write(text: str) -> None:
        tmp = preview.with_name("x.tmp")
        tmp.write_text(json.dumps({"v": 1, "reply_id": "r1", "channel_type": "fake",
                                   "platform_id": "chan", "thread_id": None, "text": text,
                                   "done": False, "reply": False}))  # fmt: skip
        os.replace(tmp, preview)

    write("Once upon")
    rig.run(rig.host.previews.poll(s.id))
    clock[0] += 1.1
    write("Once upon a time")

    async def poll(let_go: Callable[[], None]) -> float:
        async with LongestGap() as gap:
            asyncio.get_running_loop().call_later(0.5, let_go)
            await rig.host.previews.poll(s.id)  # posts the preview, then records it
        return gap.longest

    with _agents_lock(rig, s) as let_go:
        stall = rig.run(asyncio.wait_for(poll(let_go), 30))
    assert rig.channel.texts() == ["Once upon a time"]
    assert stall < 0.4, f"the event loop stalled {stall:.2f} s on the agent's lock"
    assert rig.inbound(s, "SELECT reply_id FROM carapace_preview") == [{"reply_id": "r1"}]


def test_a_destination_projected_into_a_locked_live_session_arrives_once_the_lock_goes(
    rig: Rig,
) -> None:
    """A destination added while the session's runner is alive is written into its
    ``inbound.db`` (the agent's view). Under the agent's lock the write waits on the
    session's writer thread and is written once the lock goes (within the 5 s a lock was
    always allowed), rather than failing for good after the commit's short wait."""
    s = rig.one_chat_session("chan")
    assert rig.host.pool.is_running(s.id)
    helper = rig.agent("helper")

    async def change(let_go: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(0.3, let_go)
        add_destination(rig.db, s.agent_group_id, "helper", "agent", helper)  # the hook
        await asyncio.sleep(0)
        await rig.host.projection_idle()

    with _agents_lock(rig, s) as let_go:
        rig.run(asyncio.wait_for(change(let_go), 30))
    names = [r["name"] for r in rig.inbound(s, "SELECT name FROM destinations")]
    assert "helper" in names


def _runner_up(rig: Rig, s: Session) -> None:
    async def up() -> None:
        while s.id not in rig.host.pool.running:  # (its start is under way)
            await asyncio.sleep(0.002)

    rig.run(asyncio.wait_for(up(), 5))


def _end_runner(rig: Rig, s: Session) -> None:
    _runner_up(rig, s)
    rig.host.pool.running[s.id].handle.exit(0)  # type: ignore[attr-defined]


def test_a_row_posted_under_the_lock_wakes_its_session_when_it_lands(rig: Rig) -> None:
    """A note to the agent is posted (journaled, written by the session's pump) and its
    session woken at once, as every caller does. When the row reaches the file only later
    (the agent held its lock) and the runner ended meanwhile, nothing had the session look
    again: the sweep after the exit found no row, and the note waited for the sweep's next
    safety tick (a minute). Its landing wakes the session."""
    s = rig.one_chat_session("chan")
    _runner_up(rig, s)  # (an agent holds locks only while its runner lives)
    starts = len(rig.backend.started)

    async def note() -> None:  # on the event loop, as the host's callers are
        rig.host.sessions.notify_agent(s, "a note from the host", now=rig.clock.now())
        rig.host.wake(s.id)  # its runner is live: nothing more to do

    with _agents_lock(rig, s) as let_go:
        rig.run(note())
        _end_runner(rig, s)  # the runner ends before the note is in the file

        async def gone() -> None:
            while rig.host.pool.is_running(s.id):
                await asyncio.sleep(0.002)

        rig.run(asyncio.wait_for(gone(), 5))
        let_go()
    rig.run(rig.host.sessions.ingest.settle(through_failures=False))  # type: ignore[union-attr]
    rig.settle()
    assert any("a note from the host" in t for t in _texts(rig, s))

    async def started() -> None:
        while len(rig.backend.started) == starts:
            await asyncio.sleep(0.005)

    rig.run(asyncio.wait_for(started(), 5))
    assert rig.backend.started[-1].session_id == s.id


def test_a_posted_row_not_to_act_on_wakes_no_runner(rig: Rig) -> None:
    """The wake on landing is for rows a runner acts on: an answer kept as context
    (``trigger`` 0) or a task due later starts none (the sweep indexes the task's time)."""
    s = rig.one_chat_session("chan")
    _end_runner(rig, s)
    rig.settle()
    starts = len(rig.backend.started)
    now = rig.clock.now()
    later = iso(now + timedelta(hours=1))

    async def post() -> None:  # on the event loop: journaled, then written by the pump
        rig.host.sessions.write_message(s, {"id": "ctx-1", "kind": "system",
                                            "timestamp": iso(now), "trigger": 0,
                                            "content": "{}"}, now=now)  # fmt: skip
        rig.host.sessions.write_message(s, {"id": "task-9", "kind": "task",
                                            "timestamp": iso(now), "process_after": later,
                                            "content": "{}"}, now=now, due=later)  # fmt: skip

    rig.run(post())
    rig.stored()  # (a wake on landing is synchronous: the pool would be spawning now)
    assert not rig.host.pool.is_running(s.id)
    assert len(rig.backend.started) == starts
    assert {"ctx-1", "task-9"} <= set(_ids(rig, s))


def test_rows_queued_for_a_locked_session_wait_in_the_journal_not_in_memory(rig: Rig) -> None:
    """While the agent keeps its file locked, every row routed to it waits, acknowledged
    from the journal. Past ``queued_in_memory`` a row waits there only (the host's memory
    is not the agent's to fill); the pump reads them back in batches once the lock goes,
    and every row reaches the file once, in order."""
    s = rig.one_chat_session("chan")
    _runner_up(rig, s)
    ingest = rig.host.sessions.ingest
    assert ingest is not None
    ingest.lone_wait_s = LONE_WAIT_S
    ingest.queued_in_memory = 8
    n = 600

    async def flood() -> tuple[int, int]:
        for i in range(n):
            await rig.host.route(make_event(f"f{i}", platform_id="chan", id=f"f{i}"),
                                 settle=False)  # fmt: skip
        queue = ingest._queues[s.id]
        return len(queue), sum(q.row is not None for q in queue)

    with _agents_lock(rig, s):
        queued, held = rig.run(asyncio.wait_for(flood(), 60))
    assert queued >= n - 1  # (the first may be in the writer's hands)
    assert held <= ingest.queued_in_memory + BATCH_MAX, held  # (a try's batch is read back)
    rig.run(asyncio.wait_for(ingest.settle(through_failures=False), 60))
    ids = [i for i in _ids(rig, s) if i.startswith("f")]
    assert ids == [f"f{i}" for i in range(n)]
    assert not ingest._queues.get(s.id)
