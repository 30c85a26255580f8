"""What an agent's reply may cost the host's event loop and memory.

The host parses a reply's JSON on the event loop, where it is sent. Content up to 4 MiB
was accepted whatever it held: 4 MiB of ``[0,0,0,…]`` took 135 ms to parse (prose of the
same size ~6 ms), a stall of every chat of the host per row, as often as the agent liked.
A delivery read returned up to 500 rows of 4 MiB (2 GiB in the host's memory), and JSON
nested past Python's recursion limit raised a ``RecursionError`` that was retried as if
the channel had failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from host_rig import Rig

import carapace.host.delivery as delivery
import carapace.host.dispatch as dispatch
from carapace.channels.fake import make_event
from carapace.db.sessions import Session
from carapace.host.outbox_reader import CHEAP_CONTENT_BYTES, MAX_CONTENT_COMMAS, MAX_READ_CONTENT
from carapace.jsonutil import dumps


def _session(rig: Rig) -> Session:
    ag = rig.agent()
    mg = rig.chat("chan")
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("hi", platform_id="chan", id="m1")))
    [s] = rig.sessions()
    return s


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
         keep: Callable[[tuple[Any, ...], Any], Any]) -> list[Any]:  # fmt: skip
    """``keep(arguments, result)`` of each call of ``module.<name>`` from now on."""
    seen: list[Any] = []
    real = getattr(module, name)

    def spying(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        seen.append(keep(a, out))
        return out

    monkeypatch.setattr(module, name, spying)
    return seen


def _notes(rig: Rig, s: Session) -> list[str]:
    rows = rig.inbound(s, "SELECT content FROM messages_in WHERE channel_type='agent'")
    return [r["content"] for r in rows]


def test_content_dear_to_parse_is_refused_unparsed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _session(rig)
    parsed = _spy(monkeypatch, dispatch, "loads_or", lambda args, _out: args[0])
    crafted = '{"text":"a","n":[' + ",".join(["0"] * (MAX_CONTENT_COMMAS + 10)) + "]}"
    assert len(crafted) > CHEAP_CONTENT_BYTES
    rid = rig.reply(s, crafted, channel_type="fake", platform_id="chan")
    prose = "Words, words, and more words. " * 20_000  # 600 KB, 40,000 commas: a long reply
    ok = rig.reply(s, {"text": prose}, channel_type="fake", platform_id="chan")
    rig.run(rig.host.deliver_once(s.id))
    status = {d["message_out_id"]: d["status"] for d in rig.delivered(s)}
    assert status == {rid: "failed", ok: "delivered"}
    assert [d.content.get("text") for d in rig.channel.deliveries] == [prose]
    assert parsed and crafted not in parsed  # the crafted row was never parsed
    [note] = _notes(rig, s)
    assert "commas" in note and "as a file" in note


def test_json_nested_too_deep_fails_at_once(rig: Rig) -> None:
    s = _session(rig)
    rid = rig.reply(s, "[" * 100_000 + "]" * 100_000, channel_type="fake", platform_id="chan")
    rig.run(rig.host.deliver_once(s.id))
    assert {d["message_out_id"]: d["status"] for d in rig.delivered(s)} == {rid: "failed"}
    [note] = _notes(rig, s)
    assert "not JSON" in note


def test_a_delivery_read_holds_a_bounded_amount_of_content(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _session(rig)
    reads = _spy(monkeypatch, delivery, "read_pass",
                 lambda _args, out: sum(len(r["content"] or "") for r in out[0]))  # fmt: skip
    big = "z" * (3 << 20)  # 3 MiB each: all ten are 30 MiB
    ids = [rig.reply(s, dumps({"text": f"{i}{big}"}), channel_type="fake", platform_id="chan")
           for i in range(10)]  # fmt: skip
    rig.run(rig.host.deliver_once(s.id))
    rig.run(rig.host.deliver_once(s.id))
    assert [d["message_out_id"] for d in rig.delivered(s)] == ids
    assert [d.content["text"][0] for d in rig.channel.deliveries] == [str(i) for i in range(10)]
    assert reads and max(reads) <= MAX_READ_CONTENT, reads
