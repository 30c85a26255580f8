"""The saved conversation, one ``session_state`` row per message (issue 19): a save writes
what is new and deletes what the bound cut; whatever happened in between (a rolled-back
save, another writer, an older runner's single value), what is loaded is what was saved."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.db.connection import transaction
from carapace.db.session import CONVERSATION_KEY, SessionPaths
from carapace.jsonutil import dumps
from carapace.runner.agent import bound_conversation, save_conversation
from carapace.runner.compaction import Encoded
from carapace.runner.conversation_store import CUT_LOOKED_AT, ConversationStore
from carapace.runner.outbound import Outbound
from carapace.runner.providers.base import Message
from carapace.testing.sessions import make_session, read_conversation, write_conversation


def _turn(n: int) -> list[Message]:
    return [
        {"role": "user", "content": f"question {n}"},
        {"role": "assistant", "content": f"answer {n}", "tool_calls": []},
    ]


class Saver:
    """A runner's side: its conversation, kept JSON and store, saved as the loop does."""

    def __init__(self, paths: SessionPaths, max_messages: int = 8) -> None:
        self.out = Outbound(paths)
        self.enc = Encoded()
        self.store = ConversationStore()
        self.max = max_messages
        self.conversation: list[Message] = self.store.load(self.out.conn) or []
        self.trace: list[str] = []
        self.out.conn.set_trace_callback(self.trace.append)

    def turn(self, n: int) -> list[str]:
        """One turn's messages saved; returns the statements that wrote the conversation."""
        self.conversation = self.conversation + _turn(n)
        return self.save()

    def save(self) -> list[str]:
        self.trace.clear()
        with self.out.atomic():
            save_conversation(self.out, self.conversation, self.max, self.enc, self.store)
        return [s for s in self.trace if s.split()[0] in ("INSERT", "DELETE")]

    def saved(self) -> list[Message]:
        return bound_conversation(self.conversation, self.max)


@pytest.fixture
def paths(tmp_path: Path) -> SessionPaths:
    return make_session(tmp_path)


@pytest.fixture
def saver(paths: SessionPaths) -> Iterator[Saver]:
    s = Saver(paths)
    yield s
    s.out.close()


def test_a_turn_writes_its_messages_and_deletes_the_cut_ones(
    paths: SessionPaths, saver: Saver
) -> None:
    saver.turn(1)  # (the first save rewrites: nothing was known to be stored)
    written = saver.turn(2)
    assert len([s for s in written if s.startswith("INSERT")]) == 2 + 1  # two rows, the count
    assert not [s for s in written if s.startswith("DELETE")]
    for n in range(3, 6):
        saver.turn(n)
    written = saver.turn(6)  # over the bound of 8: the oldest turn is cut
    assert len([s for s in written if s.startswith("INSERT")]) == 3
    assert len([s for s in written if s.startswith("DELETE")]) == 2
    assert read_conversation(paths) == saver.saved()
    assert [m["content"] for m in read_conversation(paths) or []][:2] == [
        "question 3", "answer 3",
    ]  # fmt: skip


def test_a_restarted_runner_loads_what_was_saved_and_goes_on(paths: SessionPaths) -> None:
    first = Saver(paths)
    for n in range(1, 7):
        first.turn(n)
    first.out.close()
    second = Saver(paths)
    assert second.conversation == first.saved()
    written = second.turn(7)  # its store knows the rows it loaded: only the new ones
    assert len([s for s in written if s.startswith("INSERT")]) == 3
    assert read_conversation(paths) == second.saved()
    second.out.close()


def test_a_compaction_rewrites_every_row(paths: SessionPaths, saver: Saver) -> None:
    for n in range(1, 4):
        saver.turn(n)
    summary: Message = {"role": "user", "content": "summary", "compaction": True}
    saver.conversation = [summary, *saver.conversation[-2:]]
    written = saver.save()
    assert written[0].startswith("DELETE")  # the whole range, then all rows
    assert read_conversation(paths) == [summary, *_turn(3)]
    saver.turn(4)
    assert read_conversation(paths) == [summary, *_turn(3), *_turn(4)]


def test_a_rolled_back_save_is_not_trusted(paths: SessionPaths, saver: Saver) -> None:
    """A save whose transaction rolled back (the turn's commit failed) had cut the oldest
    turn: the rows it deleted are back, and the next save must not miss them."""
    for n in range(1, 5):
        saver.turn(n)  # 8 messages: the bound
    kept = saver.conversation
    saver.conversation = kept + _turn(5)
    with pytest.raises(RuntimeError), saver.out.atomic():  # the turn's commit fails
        save_conversation(saver.out, saver.conversation, saver.max, saver.enc, saver.store)
        raise RuntimeError("the reply could not be written")
    assert read_conversation(paths) == kept
    saver.conversation = kept + _turn(6)  # the failed turn's messages were not kept
    saver.save()
    assert read_conversation(paths) == saver.saved() == kept[2:] + _turn(6)


def test_another_writer_between_saves_is_overwritten(paths: SessionPaths, saver: Saver) -> None:
    saver.turn(1)
    write_conversation(paths, [{"role": "user", "content": "planted"}])
    saver.turn(2)
    assert read_conversation(paths) == _turn(1) + _turn(2)


def test_an_older_runners_value_is_read_and_replaced(paths: SessionPaths) -> None:
    old = _turn(1) + _turn(2)
    with sqlite3.connect(paths.outbound) as conn:
        conn.execute(
            "INSERT INTO session_state (key, value, updated_at) VALUES (?, ?, 't')",
            (CONVERSATION_KEY, dumps(old)),
        )
    saver = Saver(paths)
    assert saver.conversation == old
    saver.turn(3)
    assert read_conversation(paths) == old + _turn(3)
    with sqlite3.connect(paths.outbound) as conn:
        assert not conn.execute(
            "SELECT 1 FROM session_state WHERE key = ?", (CONVERSATION_KEY,)
        ).fetchone()
    saver.out.close()


def test_a_cleared_conversation_is_saved_empty_and_none_is_none(
    paths: SessionPaths, saver: Saver
) -> None:
    assert saver.store.load(saver.out.conn) is None  # nothing saved: the transcript decides
    saver.turn(1)
    saver.conversation = []
    saver.save()
    assert read_conversation(paths) == []
    assert ConversationStore().load(saver.out.conn) == []  # (not None: no rebuild)


def test_an_unreadable_row_is_left_out_and_the_next_save_rewrites(
    paths: SessionPaths, saver: Saver
) -> None:
    saver.turn(1)
    saver.turn(2)
    with transaction(saver.out.conn):
        saver.out.conn.execute(
            "UPDATE session_state SET value = 'not json' WHERE key = "
            "(SELECT MIN(key) FROM session_state WHERE key > 'conversation/')"
        )
    store = ConversationStore()
    assert store.load(saver.out.conn) == [_turn(1)[1], *_turn(2)]
    saver.store = store
    saver.conversation = [*_turn(2), *_turn(3)]
    written = saver.save()
    assert written[0].startswith("DELETE")
    assert read_conversation(paths) == [*_turn(2), *_turn(3)]


def test_a_summary_that_outlives_the_cut_messages_is_kept_in_place(
    paths: SessionPaths, saver: Saver
) -> None:
    """After a compaction the summary stays first while the bound cuts the turns after it:
    a turn then writes its own messages and deletes the cut ones, the summary's row stays."""
    summary: Message = {"role": "user", "content": "summary", "compaction": True}
    saver.max = 7
    saver.conversation = [summary]
    saver.save()
    for n in range(1, 4):
        saver.turn(n)  # 7 messages
    written = saver.turn(4)  # 9 over the bound of 7: turn 1 is cut, the summary is not
    assert len([s for s in written if s.startswith("INSERT")]) == 3
    assert len([s for s in written if s.startswith("DELETE")]) == 2
    assert read_conversation(paths) == saver.saved() == [summary, *_turn(2), *_turn(3), *_turn(4)]
    for n in range(5, 9):
        saver.turn(n)
        assert read_conversation(paths) == saver.saved()


def test_every_shape_of_save_reads_back_as_saved(paths: SessionPaths, saver: Saver) -> None:
    """A sequence of turns, cuts, compactions, a /clear and a message list rebuilt from
    copies: whatever path a save takes, what is read back is what was saved."""
    for n in range(1, 40):
        if n % 9 == 0:  # a compaction: a new first message
            saver.conversation = [{"role": "user", "content": f"summary {n}", "compaction": True},
                                  *saver.conversation[-4:]]  # fmt: skip
        elif n % 13 == 0:  # /clear
            saver.conversation = []
        elif n % 11 == 0:  # the same messages, new objects (a reload)
            saver.conversation = [dict(m) for m in saver.conversation]
        saver.turn(n)
        assert read_conversation(paths) == saver.saved()
    restarted = Saver(paths)
    assert restarted.conversation == saver.saved()
    restarted.out.close()


def test_a_list_that_lost_its_newest_messages_reads_back_as_saved(
    paths: SessionPaths, saver: Saver
) -> None:
    """Not a shape a turn makes, but a save must not keep a stored message the list no
    longer has, wherever it is."""
    for n in range(1, 4):
        saver.turn(n)
    saver.conversation = saver.conversation[1:-2]  # the oldest and the newest two gone
    saver.save()
    assert read_conversation(paths) == saver.saved()
    saver.conversation = saver.conversation[:-1]
    saver.save()
    assert read_conversation(paths) == saver.saved()


def test_the_usual_turns_plan_is_made_without_a_pass_over_the_history_and_is_the_same(
    ) -> None:  # fmt: skip
    """A turn's save finds what the bound cut and what is new at the two ends of the list
    (``_plan_tail``), not with a pass in Python over every message; whenever it answers,
    it answers as the general plan does, and it leaves to that plan every list it is not
    sure of (fewer messages, a stored message again, a new first message)."""
    rows = [(p, {"role": "user", "content": str(p)}) for p in range(200)]
    ids = {id(m) for _p, m in rows}
    msgs = [m for _p, m in rows]
    new = [{"role": "user", "content": "new"}, {"role": "assistant", "content": "a"}]
    cases = {
        "grew": (msgs + new, True),
        "cut and grew": (msgs[2:] + new, True),
        "cut only": (msgs[4:], True),
        "same": (list(msgs), True),
        "lost its newest": (msgs[1:-2], False),
        "a stored message again": ([*msgs, new[0], msgs[5]], False),
        "new first message": ([{"role": "user", "content": "summary"}, *msgs[3:]], False),
        "cut past the look": (msgs[CUT_LOOKED_AT + 1 :] + new, False),
        "reordered": (msgs[:10] + msgs[11:] + [msgs[10]], False),
    }
    for name, (messages, fast) in cases.items():
        tail = ConversationStore._plan_tail(rows, ids, messages)
        general = ConversationStore._plan_any(rows, messages)
        assert (tail is not None) == fast, name
        if tail is not None:
            assert tail == general, name
            assert tail[3] == {id(m) for m in messages}, name
