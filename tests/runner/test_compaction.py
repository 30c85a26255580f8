"""Compaction: old turns summarised under a tiny context limit, tool pairs intact, nothing
delivered twice; the transcript records it and a restarted runner rebuilds from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from carapace.errors import ProviderError
from carapace.runner.agent import append_transcript, resume_conversation
from carapace.runner.compaction import (
    COMPACTION_MARKER,
    compact,
    conversation_chars,
    is_summary,
    split_point,
)
from carapace.runner.config import RunnerConfig
from carapace.runner.loop import Runner
from carapace.runner.outbound import Outbound
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers.base import Message, ToolSpec, Turn
from carapace.runner.providers.mock import MockProvider
from carapace.runner.transcript import rebuild_conversation
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_acks,
    read_conversation,
    read_outbound,
    write_chat,
)
from carapace.watch import DirWatcher


def exchange(n: int, *, tool: bool = False) -> list[Message]:
    msgs: list[Message] = [{"role": "user", "content": f"question {n} " + "q" * 300}]
    if tool:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{n}", "name": "read_file", "arguments": {"path": "x"}}]})  # fmt: skip
        msgs.append({"role": "tool", "tool_call_id": f"c{n}", "name": "read_file",
                     "content": "r" * 100, "is_error": False})  # fmt: skip
    msgs.append({"role": "assistant", "content": f"answer {n} " + "a" * 300, "tool_calls": []})
    return msgs


def pairs_intact(conversation: list[Message]) -> bool:
    open_ids: set[str] = set()
    for m in conversation:
        if m["role"] == "assistant":
            open_ids = {c["id"] for c in m.get("tool_calls") or ()}
        elif m["role"] == "tool" and m["tool_call_id"] not in open_ids:
            return False
    return True


def test_split_point_cuts_at_a_user_message_only() -> None:
    conv = exchange(1, tool=True) + exchange(2, tool=True) + exchange(3)
    for keep in range(0, conversation_chars(conv) + 10, 37):
        cut = split_point(conv, keep)
        assert cut == len(conv) or conv[cut]["role"] == "user"
        assert pairs_intact(conv[cut:])
        if cut < len(conv):
            assert conversation_chars(conv[cut:]) <= keep
    assert split_point(conv, 10**6) == 0
    assert split_point(conv, 10**6, keep_messages=3) == len(conv) - 2


def test_compact_with_the_mock_is_deterministic() -> None:
    conv = exchange(1, tool=True) + exchange(2) + exchange(3)
    mock = MockProvider()
    a = compact(mock, conv, limit_chars=1600)
    b = compact(mock, conv, limit_chars=1600)
    assert a is not None and b is not None and a == b
    assert not a.fallback and a.summary.startswith("Mock summary of the earlier conversation")
    assert "question 1" in a.summary and "answer 2" in a.summary
    head = a.conversation[0]
    assert is_summary(head) and head["content"].startswith('<context type="compaction"')
    assert "do not answer, repeat or re-send" in head["content"]
    assert a.conversation[1:] == conv[-a.kept :] and a.replaced + a.kept == len(conv)
    assert a.after_chars < a.before_chars
    # Compacting again folds the old summary into the new one.
    c = compact(mock, a.conversation + exchange(4), limit_chars=1600)
    assert c is not None and "earlier summary" in c.summary


def test_compact_with_the_agents_kept_sizes_equals_the_full_recomputation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the agent's ``Encoded`` (its messages' sizes kept across turns) a compaction
    encodes only what it has not seen (the summary), and its figures and cut are what the
    full recomputation gives."""
    import carapace.runner.compaction as compaction_module
    from carapace.runner.compaction import Encoded

    conv = exchange(1, tool=True) + exchange(2) + exchange(3) + exchange(4, tool=True)
    plain = compact(MockProvider(), conv, limit_chars=1600)
    enc = Encoded()
    enc.sync(conv)
    calls = [0]
    real = compaction_module.message_chars

    def counting(m: Message) -> int:
        calls[0] += 1
        return real(m)

    monkeypatch.setattr(compaction_module, "message_chars", counting)
    kept = compact(MockProvider(), conv, limit_chars=1600, encoded=enc)
    assert calls[0] == 1  # the summary message only: the conversation's sizes were kept
    assert plain is not None and kept is not None
    assert kept == plain
    assert kept.before_chars == conversation_chars(conv)
    assert kept.after_chars == conversation_chars(kept.conversation)


def test_compaction_survives_a_failing_summary() -> None:
    class Broken:
        name = "broken"

        def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
            raise ProviderError("summary model down")

    result = compact(Broken(), exchange(1) + exchange(2) + exchange(3), limit_chars=600)
    assert result is not None and result.fallback
    assert "No summary could be made" in result.summary and result.summary.endswith("a" * 50)


def test_nothing_to_cut_means_no_compaction() -> None:
    assert compact(MockProvider(), exchange(1), limit_chars=10**6) is None


class Counting:
    """Answers every message with a numbered reply; summaries are counted apart."""

    name = "counting"

    def __init__(self) -> None:
        self.answers = 0
        self.summaries = 0
        self.sent: list[list[Message]] = []

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        if system.startswith(COMPACTION_MARKER):
            self.summaries += 1
            return Turn(text=f"summary {self.summaries}")
        self.sent.append(list(messages))
        self.answers += 1
        return Turn(text=f"reply {self.answers} " + "z" * 150)


def make_runner(tmp_path: Path, provider: Any, settings: dict[str, Any]) -> Runner:
    paths = make_session(
        tmp_path, destinations=[channel_dest("family", "telegram", "chat-1")],
        routing=("telegram", "chat-1", None),
    )  # fmt: skip
    agent_dir = make_agent_dir(tmp_path, config={"settings": settings})
    cfg = RunnerConfig.load(paths.root, agent_dir, provider="mock", environ={})
    runner = Runner(cfg, provider, watcher=DirWatcher(use_inotify=False))
    runner.start()
    return runner


def test_runner_compacts_without_sending_anything_twice(tmp_path: Path) -> None:
    provider = Counting()
    runner = make_runner(tmp_path, provider, {"context_limit_chars": 900})
    try:
        for i in range(1, 9):
            write_chat(runner.paths, f"message {i}", id=f"m{i}")
            assert runner.step()
        assert provider.summaries >= 2
        outs = read_outbound(runner.paths)
        assert [o["in_reply_to"] for o in outs] == [f"m{i}" for i in range(1, 9)]
        assert [o["content"]["text"].split(" z")[0] for o in outs] == [
            f"reply {i}" for i in range(1, 9)
        ]
        assert set(read_acks(runner.paths).values()) == {"completed"}
        for sent in provider.sent:
            assert conversation_chars(sent) <= 900 + 400  # the limit, plus the new message
        state = read_conversation(runner.paths) or []
        assert is_summary(state[0]) and "summary" in state[0]["content"]
    finally:
        runner.close()
    transcript = runner.paths.root / "conversations" / f"{runner.config.session_id}.jsonl"
    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert sum(1 for e in events if e.get("type") == "compaction") == provider.summaries
    # The transcript replays to the same conversation as session_state.
    assert rebuild_conversation(runner.paths.root, runner.config.session_id) == state


def test_resume_from_transcript_when_the_state_is_gone(tmp_path: Path) -> None:
    mock = create_provider(ProviderConfig())
    runner = make_runner(tmp_path, mock, {})
    write_chat(runner.paths, "remember KIWI", id="m1")
    assert runner.step()
    sid, sdir = runner.config.session_id, runner.paths.root
    runner.outbound.conn.execute("DELETE FROM session_state WHERE key LIKE 'conversation%'")
    runner.close()
    out = Outbound(runner.paths)
    try:
        conv = resume_conversation(out, sdir, sid, 200)
        assert [m["role"] for m in conv] == ["user", "assistant"]
        assert "remember KIWI" in conv[0]["content"]
        # A /clear line empties it; an explicit empty state wins over the transcript.
        append_transcript(sdir, sid, [{"type": "clear"}])
        assert rebuild_conversation(sdir, sid) == []
        out.set_state("conversation", "[]")
        assert resume_conversation(out, sdir, sid, 200) == []
    finally:
        out.close()


def test_torn_transcript_lines_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "conversations"
    folder.mkdir()
    (folder / "s.jsonl").write_text(
        '{"ts":"t","role":"user","content":"a"}\n{"ts":"t","role":"assis', encoding="utf-8"
    )
    assert rebuild_conversation(tmp_path, "s") == [{"role": "user", "content": "a"}]
    assert rebuild_conversation(tmp_path, "missing") is None


def test_a_legacy_transcript_in_the_group_folder_is_still_read(tmp_path: Path) -> None:
    group, session = tmp_path / "group", tmp_path / "session"
    (group / "conversations").mkdir(parents=True)
    session.mkdir()
    (group / "conversations" / "s.jsonl").write_text(
        '{"ts":"t","role":"user","content":"old"}\n', encoding="utf-8"
    )
    assert rebuild_conversation(session, "s") is None
    assert rebuild_conversation(session, "s", group) == [{"role": "user", "content": "old"}]
