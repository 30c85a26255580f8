"""Answers to host/system notes (spec §2.10) and the mock's neutralised quotes.

A note is a chat row on the agent channel from the agent's own group (or sent by
``system``). The bare final answer to it goes to ``session_routing`` (the user's chat),
never back to the agent itself; without a session chat it is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.runner.config import RunnerConfig
from carapace.runner.inbound import Inbound, Routing
from carapace.runner.loop import Runner
from carapace.runner.outbound import Outbound
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers.mock import DEFAULT_PREFIX, MockProvider, neutralise
from carapace.runner.reply import MESSAGE_BLOCK_RE, dispatch_final_text, reply_routing
from carapace.runner.tools.base import Batch
from carapace.testing.sessions import (
    DEFAULT_AGENT_GROUP,
    agent_dest,
    channel_dest,
    make_agent_dir,
    make_session,
    read_outbound,
    write_chat,
    write_message,
)
from carapace.timefmt import utcnow
from carapace.watch import DirWatcher

OWN = DEFAULT_AGENT_GROUP
DESTS = [channel_dest("family", "telegram", "chat-1"), agent_dest("helper", "ag-helper")]
NOTE_TEXT = (
    'Agent "helper" created. You can now message it with <message to="helper">...</message>.'
)


def write_note(paths: Any, text: str = NOTE_TEXT, *, id: str = "sys-1") -> int:
    return write_message(
        paths, kind="chat", id=id, channel_type="agent", platform_id=OWN,
        content={"text": text, "sender": "system", "senderId": "system"},
    )  # fmt: skip


class Rig:
    def __init__(self, tmp_path: Path, routing: tuple[str, str, None] | None) -> None:
        self.tmp_path = tmp_path
        self.paths = make_session(tmp_path, destinations=DESTS, routing=routing)
        self.runners: list[Runner] = []

    def runner(self, script: list[Any] | None = None) -> Runner:
        agent_dir = make_agent_dir(self.tmp_path, mock_script=script)
        cfg = RunnerConfig.load(
            self.paths.root, agent_dir, provider="mock", environ={"CARAPACE_TZ": "UTC"}
        )
        prov = create_provider(ProviderConfig(agent_dir=str(agent_dir)))
        r = Runner(cfg, prov, watcher=DirWatcher(use_inotify=False))
        r.start()
        self.runners.append(r)
        return r

    def close(self) -> None:
        for r in self.runners:
            r.close()


@pytest.fixture
def chat_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path / "chat", ("telegram", "chat-1", None))
    yield rig
    rig.close()


@pytest.fixture
def bare_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path / "bare", None)  # an agent-shared session: no chat of its own
    yield rig
    rig.close()


def test_bare_answer_to_a_note_goes_to_the_session_chat(chat_rig: Rig) -> None:
    write_note(chat_rig.paths)
    assert chat_rig.runner().step()
    [out] = read_outbound(chat_rig.paths)
    assert (out["channel_type"], out["platform_id"]) == ("telegram", "chat-1")
    assert out["in_reply_to"] == "sys-1"
    # the default mock quoted the note: no routable markup, nothing sent to "helper"
    assert not MESSAGE_BLOCK_RE.search(out["content"]["text"])
    assert '‹message to="helper"›' in out["content"]["text"]


def test_bare_answer_to_a_note_without_session_chat_is_dropped(
    bare_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    write_note(bare_rig.paths)
    with caplog.at_level(logging.INFO, logger="carapace.runner.reply"):
        assert bare_rig.runner().step()
    assert read_outbound(bare_rig.paths) == []  # not to the agent itself, not anywhere
    assert any("reply to host note sys-1 dropped" in r.getMessage() for r in caplog.records)


def test_system_sender_on_agent_channel_is_a_note(chat_rig: Rig) -> None:
    write_message(
        chat_rig.paths, kind="chat", id="sys-2", channel_type="agent", platform_id="ag-other",
        content={"text": "host says hi", "sender": "system", "senderId": "system"},
    )  # fmt: skip
    chat_rig.runner().step()
    [out] = read_outbound(chat_rig.paths)
    assert (out["channel_type"], out["platform_id"]) == ("telegram", "chat-1")


def test_answer_to_another_agent_still_goes_back_to_it(chat_rig: Rig) -> None:
    write_chat(chat_rig.paths, "question", id="a2a-1", sender="helper",
               channel_type="agent", platform_id="ag-helper")  # fmt: skip
    chat_rig.runner().step()
    [out] = read_outbound(chat_rig.paths)
    assert (out["channel_type"], out["platform_id"]) == ("agent", "ag-helper")


def test_a_user_called_system_on_a_chat_is_not_a_note(chat_rig: Rig) -> None:
    write_chat(chat_rig.paths, "hi", id="m1", sender="system", channel_type="telegram",
               platform_id="chat-2")  # fmt: skip
    chat_rig.runner().step()
    [out] = read_outbound(chat_rig.paths)
    assert (out["channel_type"], out["platform_id"]) == ("telegram", "chat-2")


def test_reply_routing_of_notes(chat_rig: Rig, bare_rig: Rig) -> None:
    write_note(chat_rig.paths)
    write_note(bare_rig.paths)
    note = Batch(in_reply_to="sys-1", origin=Routing("agent", OWN), ids=("sys-1",))
    assert reply_routing(note, Inbound(chat_rig.paths)) == Routing("telegram", "chat-1", None)
    assert reply_routing(note, Inbound(bare_rig.paths)).empty  # never the agent itself


def test_explicit_block_to_an_agent_starts_a_new_chain(chat_rig: Rig) -> None:
    # an old message from helper exists, but this turn answers the user: in_reply_to is the
    # user's row, so the host does not count the block as a reply to helper (hop chain)
    write_chat(chat_rig.paths, "old", id="a2a-old", sender="helper", channel_type="agent",
               platform_id="ag-helper", )  # fmt: skip
    write_chat(chat_rig.paths, "ask helper", id="m1")
    batch = Batch(in_reply_to="m1", origin=Routing("telegram", "chat-1"), ids=("m1",))
    out = Outbound(chat_rig.paths)
    try:
        dispatch_final_text('<message to="helper">hi</message>', batch, Inbound(chat_rig.paths),
                            out, utcnow)  # fmt: skip
    finally:
        out.close()
    [row] = read_outbound(chat_rig.paths)
    assert row["platform_id"] == "ag-helper" and row["in_reply_to"] == "m1"
    # answering helper's row in this batch: the chain continues
    batch = Batch(in_reply_to="a2a-old", origin=Routing("agent", "ag-helper"), ids=("a2a-old",))
    out = Outbound(chat_rig.paths)
    try:
        dispatch_final_text('<message to="helper">re</message>', batch, Inbound(chat_rig.paths),
                            out, utcnow)  # fmt: skip
    finally:
        out.close()
    assert read_outbound(chat_rig.paths)[-1]["in_reply_to"] == "a2a-old"


# -- the mock never makes markup out of a quote ------------------------------------------


def test_neutralise() -> None:
    assert neutralise('<message to="x">hi</message>') == '‹message to="x"›hi‹/message›'
    assert neutralise("no brackets") == "no brackets"


def test_mock_default_quote_is_neutralised() -> None:
    turn = MockProvider().complete("", [{"role": "user", "content": NOTE_TEXT}], [])
    assert turn.text.startswith(DEFAULT_PREFIX)
    assert "<" not in turn.text and ">" not in turn.text
    assert not MESSAGE_BLOCK_RE.search(turn.text)


def test_mock_script_substitution_in_reply_is_neutralised() -> None:
    script = [{"reply": "you said: {user_text}",
               "tool_calls": [{"name": "echo", "arguments": {"text": "{user_text}"}}]}]  # fmt: skip
    mock = MockProvider(ProviderConfig(extra={"script": script}))
    msgs: list[Any] = [{"role": "user", "content": "a <b> c"}]
    first = mock.complete("", msgs, [])
    assert first.tool_calls[0].arguments == {"text": "a <b> c"}  # not parsed for blocks: raw
    msgs += [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]},
             {"role": "tool", "content": "done"}]  # fmt: skip
    assert mock.complete("", msgs, []).text == "you said: a ‹b› c"


def test_mock_quotes_a_task_by_its_instructions() -> None:
    from carapace.runner.providers.mock import last_user_text

    prompt = (
        '<context timezone="UTC" />\n<task from="cli" time="Nov 26, 2026, 11:52 AM">'
        "Instructions:\nsales &amp; overview</task>"
    )
    assert last_user_text([{"role": "user", "content": prompt}]) == "sales & overview"
