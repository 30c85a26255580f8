"""The host's send-intent log (host/send_intents.py, issues 14 and 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carapace.host import send_intents
from carapace.host.send_intents import SendIntents, read_open


def test_open_intents_survive_a_new_process_and_outcomes_end_them(tmp_path: Path) -> None:
    log = tmp_path / "send-intents.jsonl"
    a = SendIntents(log)
    a.record("s1", "r1")
    a.record("s1", "r2")
    a.record("s2", "r1")
    a.done("s1", ["r1", "never-recorded"])
    # a crash: no close(); what the next host reads is what the file says
    b = SendIntents(log)
    assert b.maybe_sent("s1", "r2") and b.maybe_sent("s2", "r1")
    assert not b.maybe_sent("s1", "r1") and not b.maybe_sent("s2", "r2")
    assert log.stat().st_mode & 0o777 == 0o600
    # read at first use, the file is rewritten with only what is open
    assert len(log.read_bytes().splitlines()) == 2
    b.record("s1", "r1")  # sent again: open again, ended again
    b.done("s1", ["r1", "r2"])
    b.done("s2", ["r1"])
    assert read_open(log) == {} and not b.maybe_sent("s1", "r2")
    a.close()
    b.close()


def test_agent_chosen_row_ids_cannot_forge_lines(tmp_path: Path) -> None:
    log = tmp_path / "send-intents.jsonl"
    evil = 'x"]\n["d", "s1", "victim'
    i = SendIntents(log)
    i.record("s1", "victim")
    i.record("s1", evil)
    i.close()
    assert list(read_open(log)) == [("s1", "victim"), ("s1", evil)]


def test_a_torn_last_line_and_junk_are_ignored(tmp_path: Path) -> None:
    log = tmp_path / "send-intents.jsonl"
    log.write_bytes(b'["i", "s", "ok"]\n[1, 2]\nnot json\n["i", 3, "x"]\n["i", "s", "to')
    assert list(read_open(log)) == [("s", "ok")]


def test_the_log_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_intents, "COMPACT_BYTES", 2000)
    log = tmp_path / "send-intents.jsonl"
    i = SendIntents(log)
    i.record("s", "kept")
    for n in range(200):
        i.record("s", f"row-{n}")
        i.done("s", [f"row-{n}"])
        assert log.stat().st_size < 2000 + 200
    assert list(read_open(log)) == [("s", "kept")]
    i.close()


def test_a_link_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    log = tmp_path / "send-intents.jsonl"
    log.symlink_to(target)
    i = SendIntents(log)
    assert not i.maybe_sent("s", "r")  # not read through the link (logged)
    i.record("s", "r")  # the rewrite replaced the link with a file of the host's own
    assert not log.is_symlink() and target.read_text() == ""
    i.close()
