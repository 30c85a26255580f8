"""An agent's files are read, copied and a new target's folder made off the event loop.

A reply may name files of the agent's outbox, up to 50 MB in all; an agent-to-agent
message copies them into the target session's inbox. Both ran on the event loop (measured
here: 13-55 ms to read 50 MB, 250-280 ms to copy them), so an agent attaching two 25 MB
files to every message held up every chat of the host; a message to an agent with no
session yet also made that session's folder and DBs there (several durable commits).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from host_rig import Rig

import carapace.host.sessions as sessions_module
import carapace.safefs as safefs
from carapace.channels.fake import make_event
from carapace.db.destinations import add_destination


def _threads(monkeypatch: pytest.MonkeyPatch, module: Any, *names: str) -> list[tuple[str, int]]:
    """(function, thread) of each call of ``module.<name>`` from now on."""
    calls: list[tuple[str, int]] = []
    for name in names:
        real = getattr(module, name)

        def noting(*a: Any, _real: Callable[..., Any] = real, _name: str = name, **k: Any) -> Any:
            calls.append((_name, threading.get_ident()))
            return _real(*a, **k)

        monkeypatch.setattr(module, name, noting)
    return calls


def _chatting(rig: Rig, agent: str, row: str, name: str, data: bytes) -> Any:
    """The agent's session with one chat, and a file in the outbox folder of row ``row``."""
    mg = rig.chat("chan")
    rig.wire(mg, agent)
    rig.run(rig.host.route(make_event("hi", platform_id="chan", id="m1")))
    [s] = rig.sessions()
    folder = rig.paths(s).outbox / row
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    return s


def test_a_replys_files_are_read_off_the_event_loop(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _chatting(rig, rig.agent(), "r1", "big.bin", b"x" * (2 << 20))
    calls = _threads(monkeypatch, safefs, "read_beneath")
    rig.reply(s, {"text": "here", "files": ["big.bin"]}, channel_type="fake",
              platform_id="chan", id="r1")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    assert rig.channel.deliveries[-1].files == [("big.bin", b"x" * (2 << 20))]
    loop_thread = threading.get_ident()
    assert calls and all(t != loop_thread for _n, t in calls), calls


def test_an_agent_message_with_files_to_a_new_session_is_made_off_the_event_loop(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = rig.agent("alpha"), rig.agent("beta")
    add_destination(rig.db, a, "beta", "agent", b)
    s = _chatting(rig, a, "to-beta", "data.bin", b"y" * (2 << 20))
    calls = _threads(monkeypatch, safefs, "read_beneath", "write_beneath")
    made = _threads(monkeypatch, sessions_module, "init_session_folder")
    rig.reply(s, {"text": "for you", "files": ["data.bin"]}, channel_type="agent",
              platform_id=b, id="to-beta")  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    [t] = [x for x in rig.sessions() if x.agent_group_id == b]
    [row] = rig.inbound(t, "SELECT content FROM messages_in WHERE channel_type='agent'")
    [att] = json.loads(row["content"])["attachments"]
    assert (rig.paths(t).root / att["localPath"]).read_bytes() == b"y" * (2 << 20)
    loop_thread = threading.get_ident()
    assert made, "the target's session was made"
    names = {n for n, _t in calls}
    assert {"read_beneath", "write_beneath"} <= names
    assert all(t != loop_thread for _n, t in calls + made), calls + made
