"""What the warm path keeps between turns (issue 19): each message's JSON and size, the
memory files, one keepalive thread, and retried reads of a busy ``inbound.db``. Whatever
is kept must equal what a full recomputation gives."""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import carapace.runner.agent as agent_module
import carapace.runner.inbound as inbound_module
from carapace import safefs
from carapace.db.connection import is_busy
from carapace.db.session import SessionPaths, touch_heartbeat
from carapace.jsonutil import dumps
from carapace.runner.agent import bound_conversation
from carapace.runner.compaction import Encoded, conversation_chars, is_summary
from carapace.runner.config import RunnerConfig
from carapace.runner.inbound import Inbound
from carapace.runner.keepalive import Keepalive
from carapace.runner.loop import Runner
from carapace.runner.prompt import FileCache, compose_system_prompt
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers.base import Message
from carapace.testing.sessions import make_agent_dir, make_session, read_outbound, write_chat
from carapace.watch import DirWatcher


def _reference_bound(messages: list[Message], max_messages: int) -> list[Message]:
    """bound_conversation as it was before the cache: ``dumps`` of the whole list per step."""
    out = messages[-max_messages:] if max_messages > 0 else []
    while out and (out[0].get("role") != "user" or len(dumps(out)) > agent_module.MAX_STATE_CHARS):
        out = out[1:]
        while out and out[0].get("role") != "user":
            out = out[1:]
    if messages and out and is_summary(messages[0]) and out[0] is not messages[0]:
        with_summary = [messages[0], *out]
        if (
            len(with_summary) <= max_messages
            and len(dumps(with_summary)) <= agent_module.MAX_STATE_CHARS
        ):
            out = with_summary
    return out


def _turn(n: int, size: int = 50) -> list[Message]:
    return [
        {"role": "user", "content": f"question {n} ü " + "q" * size},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{n}", "name": "read_file", "arguments": {"path": "ä", "n": 1.5}}]},
        {"role": "tool", "tool_call_id": f"c{n}", "name": "read_file", "content": "r" * n,
         "is_error": False, "images": [{"media_type": "image/png", "data": "QUJD" * n}]},
        {"role": "assistant", "content": f"answer {n} \u2028 \"x\"", "tool_calls": []},
    ]  # fmt: skip


def _joined(enc: Encoded, messages: list[Message]) -> str:
    """The list's JSON from the kept JSON of each message (what a save writes, per row)."""
    return "[" + ",".join(enc.json(m) for m in messages) + "]"


def test_encoded_figures_equal_the_full_recomputation() -> None:
    enc = Encoded()
    conversation: list[Message] = []
    for n in range(1, 30):
        conversation = conversation + _turn(n)
        if n % 7 == 0:  # a compaction: a new first message, the tail kept (same objects)
            summary: Message = {"role": "user", "content": f"summary {n}", "compaction": True}
            conversation = [summary, *conversation[-8:]]
        enc.sync(conversation)
        for part in (conversation, list(conversation), conversation[3:], conversation[:1], []):
            assert _joined(enc, part) == dumps(part)
            assert enc.json_len(part) == len(dumps(part))
            assert enc.chars(part) == conversation_chars(part)
        other = Encoded()  # a list longer than the one synced: not its kept figures
        other.sync(conversation)
        grown = [*conversation, {"role": "user", "content": "not synced"}]
        assert _joined(other, grown) == dumps(grown)
        assert other.json_len(grown) == len(dumps(grown))
    assert len(enc._entries) == len(conversation)  # messages that left are forgotten


def test_encoded_figures_follow_a_conversation_grown_in_place_or_changed() -> None:
    """A conversation that only grew since the last sync is synced from its new messages
    and its chars are kept; appended in place, or with one message replaced by another of
    the same length, the figures are still the full recomputation's."""
    enc = Encoded()
    conversation: list[Message] = []
    for n in range(1, 12):
        conversation.extend(_turn(n))  # the same list object, grown
        enc.sync(conversation)
        assert enc.chars(conversation) == conversation_chars(conversation)
        assert enc.json_len(conversation) == len(dumps(conversation))
        conversation.append({"role": "user", "content": "not synced yet"})
        assert enc.chars(conversation) == conversation_chars(conversation)
        conversation.pop()
    swapped = list(conversation)
    swapped[5] = {"role": "user", "content": "another message, another size"}
    assert enc.chars(swapped) == conversation_chars(swapped)
    enc.sync(swapped)
    assert enc.chars(swapped) == conversation_chars(swapped)
    assert len(enc._entries) == len(swapped)  # the replaced message is forgotten


def test_a_new_message_object_is_encoded_anew() -> None:
    enc = Encoded()
    first: Message = {"role": "user", "content": "a"}
    enc.sync([first])
    second: Message = {"role": "user", "content": "a much longer message"}
    enc.sync([second])
    assert _joined(enc, [second]) == dumps([second])


def test_bound_conversation_with_kept_json_equals_the_reference() -> None:
    conversation: list[Message] = [{"role": "user", "content": "s", "compaction": True}]
    for n in range(1, 60):
        conversation += _turn(n, size=300)
    conversation.append({"role": "tool", "tool_call_id": "x", "name": "t", "content": "late"})
    enc = Encoded()
    enc.sync(conversation)
    for max_messages in (0, 1, 2, 3, 5, 17, 40, 200, 1000):
        got = bound_conversation(conversation, max_messages, enc)
        assert got == _reference_bound(conversation, max_messages)
        assert bound_conversation(conversation, max_messages) == got


def test_bound_conversation_over_the_state_limit(monkeypatch: Any) -> None:
    monkeypatch.setattr(agent_module, "MAX_STATE_CHARS", 2_000)
    conversation: list[Message] = [{"role": "user", "content": "s", "compaction": True}]
    for n in range(1, 30):
        conversation += _turn(n, size=200)
    enc = Encoded()
    for max_messages in (4, 9, 50, 200):
        got = bound_conversation(conversation, max_messages, enc)
        want = _reference_bound(conversation, max_messages)
        assert got == want
        assert len(dumps(got)) <= 2_000
        assert json.loads(_joined(enc, got)) == got


# --- a busy inbound.db -----------------------------------------------------------------------


def _locked_inbound(paths: SessionPaths) -> sqlite3.Connection:
    """A writer holding ``inbound.db``'s exclusive lock (a host commit in progress)."""
    writer = sqlite3.connect(str(paths.inbound), isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    return writer


def test_a_read_that_finds_the_host_committing_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_session(tmp_path)
    write_chat(paths, "hello")
    reader = Inbound(paths)
    assert reader.max_seq() > 0  # the connection is open before the lock is taken
    writer = _locked_inbound(paths)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            writer.execute("COMMIT")  # the host's commit ends

    monkeypatch.setattr(inbound_module, "_sleep", sleep)
    rows = reader.poll(datetime.now(UTC)).rows
    assert [r.data["text"] for r in rows] == ["hello"]
    assert sleeps == [inbound_module.BUSY_RETRY_S] * 3  # short steps, not SQLite's 1, 2, 5 ms
    assert reader._conn is not None  # kept open: busy is not a damaged file
    reader.close()
    writer.close()


def test_a_busy_read_fails_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_session(tmp_path)
    reader = Inbound(paths)
    reader.max_seq()
    writer = _locked_inbound(paths)
    monkeypatch.setattr(inbound_module, "BUSY_TIMEOUT_S", 0.0)
    monkeypatch.setattr(inbound_module, "_sleep", lambda s: None)
    with pytest.raises(sqlite3.OperationalError) as err:
        reader.destinations()
    assert is_busy(err.value)
    writer.execute("ROLLBACK")
    assert reader.destinations() == []
    reader.close()
    writer.close()


def test_a_table_found_once_is_not_looked_up_again_but_a_missing_one_is(tmp_path: Path) -> None:
    """The host adds tables and never drops one: a table seen is not looked up again; a
    table missing (an older file) is looked for at every read until it is there."""
    paths = make_session(tmp_path)
    with sqlite3.connect(str(paths.inbound)) as host:
        host.execute("DROP TABLE destinations")
    reader = Inbound(paths)
    reader.max_seq()
    assert reader._conn is not None
    trace: list[str] = []
    reader._conn.set_trace_callback(trace.append)
    assert reader.destinations() == []
    assert reader.destinations() == []
    assert len([s for s in trace if "sqlite_master" in s]) == 2
    with sqlite3.connect(str(paths.inbound)) as host:
        host.execute(
            "CREATE TABLE destinations (name TEXT PRIMARY KEY, display_name TEXT, "
            "type TEXT, channel_type TEXT, platform_id TEXT, agent_group_id TEXT)"
        )
        host.execute("INSERT INTO destinations VALUES ('family', NULL, 'channel', 'telegram', "
                     "'chat-1', NULL)")  # fmt: skip
    trace.clear()
    assert [d.name for d in reader.destinations()] == ["family"]
    assert [d.name for d in reader.destinations()] == ["family"]
    assert len([s for s in trace if "sqlite_master" in s]) == 1
    reader.close()


# --- one keepalive thread ------------------------------------------------------------------


def test_keepalive_reuses_one_thread_across_turns() -> None:
    touched = threading.Event()
    keepalive = Keepalive(touched.set, interval=0.001)
    assert keepalive._thread is None  # nothing started before the first turn
    with keepalive:
        assert touched.wait(30)
    thread = keepalive._thread
    assert thread is not None and thread.is_alive()  # parked, not joined, between turns
    touched.clear()
    with keepalive:
        assert touched.wait(30)  # the next turn is kept alive by the same thread
    assert keepalive._thread is thread
    keepalive.close()
    assert not thread.is_alive()
    with keepalive:  # a closed keepalive starts nothing
        pass
    assert keepalive._thread is thread


class _Claims:
    """Stands in for the runner's deferred claims: a due time, and the commits made."""

    def __init__(self) -> None:
        self.due: float | None = None
        self.commits = 0

    def take(self, delay: float) -> None:
        self.due = time.monotonic() + delay

    def commit(self) -> None:
        self.commits += 1
        self.due = None


def _until(check: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_back_to_back_short_turns_do_not_wake_the_keepalive_thread_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19: a turn's start wakes the thread only when it would not look in time by
    itself, and a turn's end never does; a turn that lasts still has its claim committed
    once due and the heartbeat touched, a turn after a quiet spell (the thread parked)
    too."""
    claims = _Claims()
    touched = threading.Event()
    keepalive = Keepalive(touched.set, interval=0.3, claims=claims)  # type: ignore[arg-type]
    wakes = [0]
    real = keepalive._cond.notify

    def notify(n: int = 1) -> None:
        wakes[0] += 1
        real(n)

    monkeypatch.setattr(keepalive._cond, "notify", notify)
    for _ in range(20):  # twenty turns of 2 ms, back to back (a local model's)
        claims.take(5.0)
        with keepalive:
            time.sleep(0.002)
        claims.due = None  # (the turn's acks dropped the claim)
    assert wakes[0] <= 5 and claims.commits == 0  # (was two a turn: forty)
    assert _until(lambda: keepalive._looks_at == math.inf)  # looked at its time: parked
    before = wakes[0]
    claims.take(0.05)
    with keepalive:  # a turn that lasts: the parked thread is woken for its claim
        assert wakes[0] == before + 1
        assert _until(lambda: claims.commits == 1) and touched.wait(30)
    keepalive.close()


def test_keepalive_closes_without_a_turn() -> None:
    keepalive = Keepalive(lambda: None)
    keepalive.close()
    assert keepalive._thread is None


def test_the_runner_turns_share_one_keepalive_thread(tmp_path: Path) -> None:
    paths = make_session(tmp_path, routing=("telegram", "chat-1", None))
    agent_dir = make_agent_dir(tmp_path)
    cfg = RunnerConfig.load(paths.root, agent_dir, provider="mock", environ={"CARAPACE_TZ": "UTC"})
    runner = Runner(cfg, create_provider(ProviderConfig(agent_dir=str(agent_dir))),
                    watcher=DirWatcher(use_inotify=False))  # fmt: skip
    runner.start()
    write_chat(paths, "one")
    assert runner.step()
    thread = runner.keepalive._thread
    write_chat(paths, "two")
    assert runner.step()
    assert thread is not None and runner.keepalive._thread is thread
    assert len(read_outbound(paths)) == 2
    runner.close()
    assert not thread.is_alive()


# --- memory files read again only when they change ------------------------------------------


class _Reads:
    """Counts the reads of files through ``safefs`` (what the cache saves)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = safefs.read_beneath

        def read_beneath(root: Any, rel: Any, max_bytes: int, *, truncate: bool = False) -> bytes:
            self.names.append(str(rel))
            return real(root, rel, max_bytes, truncate=truncate)

        monkeypatch.setattr(safefs, "read_beneath", read_beneath)


def _later() -> int:
    return time.time_ns() + 60 * 10**9  # every file is older than the racy window


def _prompt(agent_dir: Path, files: FileCache) -> str:
    return compose_system_prompt(agent_dir, [], "Andy", files=files)


def test_a_kept_memory_file_is_read_again_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_dir = make_agent_dir(tmp_path)
    memory = agent_dir / "CLAUDE.local.md"
    memory.write_text("remember the milk")
    files = FileCache(clock_ns=_later)
    reads = _Reads(monkeypatch)
    assert "remember the milk" in _prompt(agent_dir, files)
    assert reads.names.count("CLAUDE.local.md") == 1
    assert "remember the milk" in _prompt(agent_dir, files)
    assert reads.names.count("CLAUDE.local.md") == 1  # unchanged: kept
    memory.write_text("remember the eggs, and the bread")  # another size
    assert "remember the eggs, and the bread" in _prompt(agent_dir, files)
    st = memory.stat()
    memory.write_text("remember the ham, and the bread!")  # the same size, written in place
    os.utime(memory, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert "remember the ham, and the bread!" in _prompt(agent_dir, files)
    memory.unlink()
    assert "remember the" not in _prompt(agent_dir, files)
    assert "Group memory" not in _prompt(agent_dir, files)


def test_a_memory_file_just_written_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_dir = make_agent_dir(tmp_path)
    (agent_dir / "CLAUDE.local.md").write_text("fresh")
    files = FileCache(clock_ns=time.time_ns)  # the file's times are this very moment
    reads = _Reads(monkeypatch)
    _prompt(agent_dir, files)
    _prompt(agent_dir, files)
    assert reads.names.count("CLAUDE.local.md") == 2


_TICK = time.time_ns()


def _coarse_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """File identities whose times are one clock tick, :data:`_TICK`, and the cache's clock
    stopped there: every file is racily new and every rewrite of the same size leaves the
    same ``lstat`` (the case a watch must catch, since ``lstat`` cannot)."""
    import carapace.runner.prompt as prompt_module

    real = prompt_module.file_identity

    def coarse(path: str) -> tuple[int, ...] | None:
        ident = real(path)
        return None if ident is None else (*ident[:3], _TICK, _TICK, ident[5])

    monkeypatch.setattr(prompt_module, "file_identity", coarse)


def _tick() -> int:
    return _TICK


@contextlib.contextmanager
def _watched_cache(clock_ns: Any) -> Iterator[FileCache]:
    """A cache whose folders are watched on a watcher of its own (a runner's, in a runner)."""
    from carapace.watch import FolderWatch

    watcher = DirWatcher()
    files = FileCache(clock_ns=clock_ns, watch=FolderWatch(watcher))
    try:
        yield files
    finally:
        files.close()
        watcher.close()


def test_a_watched_memory_file_just_written_is_kept_and_its_rewrite_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its folder watched, a file written this very moment is kept (a runner started
    just after the host wrote its CLAUDE.md composed its prompt at every turn of its first
    second), and a rewrite that leaves the same ``lstat`` is still seen at the next turn."""
    agent_dir = make_agent_dir(tmp_path)
    memory = agent_dir / "CLAUDE.local.md"
    memory.write_text("remember the milk")
    _coarse_times(monkeypatch)
    reads = _Reads(monkeypatch)
    composed = _composes(monkeypatch)
    with _watched_cache(_tick) as files:  # every file is racily new
        assert "remember the milk" in _prompt(agent_dir, files)
        assert "remember the milk" in _prompt(agent_dir, files)
        assert reads.names.count("CLAUDE.local.md") == 1 and composed[0] == 1  # kept
        memory.write_text("remember the eggs")  # the same size: the same coarse lstat
        assert "remember the eggs" in _prompt(agent_dir, files)
        assert reads.names.count("CLAUDE.local.md") == 2
        tmp = agent_dir / "new.md"
        tmp.write_text("remember the fish")
        tmp.replace(memory)  # put in place whole (an editor's save)
        assert "remember the fish" in _prompt(agent_dir, files)
        memory.unlink()
        assert "remember the" not in _prompt(agent_dir, files)
        (agent_dir / "unrelated.txt").write_text("x")  # another file: the prompt is kept
        n = composed[0]
        _prompt(agent_dir, files)
        assert composed[0] == n
    n = reads.names.count("CLAUDE.local.md")
    unwatched = FileCache(clock_ns=_tick)  # without a watch: never kept while racy
    memory.write_text("remember the milk")
    _prompt(agent_dir, unwatched)
    _prompt(agent_dir, unwatched)
    assert reads.names.count("CLAUDE.local.md") == n + 2


def test_a_watched_memory_file_with_another_link_is_not_kept_while_racy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write through another name of the file tells that name's folder, not the watched
    one: a file with two links is kept by its ``lstat`` only (never while racily new)."""
    agent_dir = make_agent_dir(tmp_path)
    memory = agent_dir / "CLAUDE.local.md"
    memory.write_text("remember the milk")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(memory, elsewhere / "alias.md")
    _coarse_times(monkeypatch)
    with _watched_cache(_tick) as files:
        assert "remember the milk" in _prompt(agent_dir, files)
        (elsewhere / "alias.md").write_text("remember the eggs")
        assert "remember the eggs" in _prompt(agent_dir, files)


def test_a_watched_folder_removed_and_made_again_is_read_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    agent_dir = make_agent_dir(tmp_path)
    global_dir = agent_dir.parent / "global"
    global_dir.mkdir()
    (global_dir / "CLAUDE.md").write_text("shared rule one")
    _coarse_times(monkeypatch)
    with _watched_cache(_tick) as files:
        assert "shared rule one" in _prompt(agent_dir, files)
        shutil.rmtree(global_dir)
        global_dir.mkdir()  # (a new folder: the old watch is gone with the old one)
        (global_dir / "CLAUDE.md").write_text("shared rule two")
        assert "shared rule two" in _prompt(agent_dir, files)
        (global_dir / "CLAUDE.md").write_text("shared rule 333")  # watched again
        assert "shared rule 333" in _prompt(agent_dir, files)


def test_a_folder_watch_names_what_changed_and_says_when_it_lost_track(tmp_path: Path) -> None:
    from carapace.watch import FolderWatch

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watcher = DirWatcher()
    w = FolderWatch(watcher)
    try:
        assert not w.watch(str(tmp_path / "missing"))
        assert w.watch(str(a)) and w.watch(str(b)) and w.watch(str(a))
        assert w.changed() == set()
        (a / "x").write_text("1")
        (b / "y").write_text("2")
        os.rename(b / "y", b / "z")
        assert w.changed() == {str(a / "x"), str(b / "y"), str(b / "z")}
        assert w.changed() == set()
        b.rename(tmp_path / "c")
        assert w.changed() is None  # a folder gone from its path: anything may have changed
        assert w.changed() == set()
        b.mkdir()
        assert w.watch(str(b))  # watched again, as it is now
        (b / "q").write_text("3")
        assert w.changed() == {str(b / "q")}
    finally:
        w.close()
    assert not w.watch(str(a))  # closed: no more watches
    watcher.close()


def test_a_symlinked_memory_file_is_not_followed(tmp_path: Path) -> None:
    agent_dir = make_agent_dir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    memory = agent_dir / "CLAUDE.local.md"
    memory.write_text("harmless")
    files = FileCache(clock_ns=_later)
    assert "harmless" in _prompt(agent_dir, files)
    memory.unlink()
    memory.symlink_to(secret)  # the agent swaps the kept file for a link
    assert "secret" not in _prompt(agent_dir, files)
    assert "harmless" not in _prompt(agent_dir, files)
    hard = agent_dir / "CLAUDE.md"
    hard.symlink_to(secret)
    assert "secret" not in _prompt(agent_dir, FileCache(clock_ns=_later))


def test_the_memory_cache_gives_what_a_fresh_read_gives(tmp_path: Path) -> None:
    agent_dir = make_agent_dir(tmp_path)
    (agent_dir / "CLAUDE.md").write_text("# rules\n@notes/extra.md\n")
    (agent_dir / "notes").mkdir()
    (agent_dir / "notes" / "extra.md").write_text("imported text")
    (agent_dir / "CLAUDE.local.md").write_text("memory")
    files = FileCache(clock_ns=_later)
    for _ in range(2):
        cached = _prompt(agent_dir, files)
        assert cached == compose_system_prompt(agent_dir, [], "Andy")
        assert "imported text" in cached


def _composes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the prompts composed (not taken from the cache) from now on."""
    import carapace.runner.prompt as prompt_module

    count = [0]
    real = prompt_module._compose

    def counting(*a: Any, **kw: Any) -> str:
        count[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(prompt_module, "_compose", counting)
    return count


def test_the_last_prompt_is_kept_while_nothing_it_was_made_of_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn's prompt is composed again only when an argument or a file it read changed
    (issue 19: ~0.1 ms a turn, more with a long CLAUDE.md): what it gives is always what
    composing gives."""
    from carapace.runner.inbound import Destination
    from carapace.runner.settings import AgentSettings

    agent_dir = make_agent_dir(tmp_path)
    (agent_dir / "CLAUDE.local.md").write_text("remember the milk")
    settings = AgentSettings.parse({})
    dests = [Destination("family", None, "channel", "telegram", "chat-1", None)]
    files = FileCache(clock_ns=_later)
    composed = _composes(monkeypatch)

    def prompt(**kw: Any) -> str:
        args: dict[str, Any] = {"settings": settings, "session_dir": tmp_path / "s", **kw}
        d = args.pop("dests", dests)
        name = args.pop("name", "Andy")
        got = compose_system_prompt(agent_dir, d, name, files=files, **args)
        n = composed[0]
        assert got == compose_system_prompt(agent_dir, d, name, **args)  # (no cache)
        composed[0] = n  # (that one is not counted)
        return got

    first = prompt()
    assert prompt() == first and composed[0] == 1
    other = [*dests, Destination("work", "Work", "channel", "slack", "C1", None)]
    assert "`work` (Work)" in prompt(dests=other) and composed[0] == 2
    assert "You are Bob" in prompt(dests=other, name="Bob") and composed[0] == 3
    prompt(dests=other, name="Bob", sandboxed=True)
    assert composed[0] == 4
    (agent_dir / "CLAUDE.local.md").write_text("remember the eggs")
    assert "remember the eggs" in prompt(dests=other, name="Bob", sandboxed=True)
    global_dir = agent_dir.parent / "global"
    global_dir.mkdir()  # the workspace section names the shared folder now
    assert str(global_dir) in prompt(dests=other, name="Bob", sandboxed=True)
    (global_dir / "CLAUDE.md").write_text("shared rule")  # a file that was missing
    assert "shared rule" in prompt(dests=other, name="Bob", sandboxed=True)
    n = composed[0]
    prompt(dests=other, name="Bob", sandboxed=True)
    assert composed[0] == n


def test_a_prompt_with_a_file_the_cache_does_not_keep_is_composed_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import (a path with folders) is read through ``safefs`` every time, and so the
    prompt that inlines it is never kept: an imported file's change is seen at once."""
    agent_dir = make_agent_dir(tmp_path)
    (agent_dir / "CLAUDE.md").write_text("# rules\n@notes/extra.md\n")
    (agent_dir / "notes").mkdir()
    extra = agent_dir / "notes" / "extra.md"
    extra.write_text("imported text")
    files = FileCache(clock_ns=_later)
    composed = _composes(monkeypatch)
    assert "imported text" in _prompt(agent_dir, files)
    st = extra.stat()
    extra.write_text("imported TEXT")  # same size, same times: only a read tells
    os.utime(extra, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "imported TEXT" in _prompt(agent_dir, files)
    assert composed[0] == 2


def test_only_a_lock_counts_as_busy(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    with pytest.raises(sqlite3.OperationalError) as err:
        conn.execute("SELECT * FROM missing")
    assert not is_busy(err.value)
    assert not is_busy(ValueError("database is locked"))
    assert is_busy(sqlite3.OperationalError("database is locked"))  # no error code: the text
    conn.close()


def test_the_heartbeat_is_made_when_missing_and_bumped_when_present(tmp_path: Path) -> None:
    paths = make_session(tmp_path)
    paths.heartbeat.unlink(missing_ok=True)
    touch_heartbeat(paths)
    assert paths.heartbeat.is_file()
    os.utime(paths.heartbeat, (1_000_000, 1_000_000))
    touch_heartbeat(paths)
    assert paths.heartbeat.stat().st_mtime > 1_000_000


def test_a_turns_transcript_lines_reuse_its_kept_json_and_are_what_dumps_gives(
    tmp_path: Path,
) -> None:
    """Issue 19: a turn's messages were encoded for its save already; their transcript
    lines are that JSON with the time put first, exactly ``dumps({"ts": …, **message})``.
    A message not kept, or one with extra fields, is encoded as before; a transcript
    folder removed under the runner is made again at the next append."""
    import shutil

    from carapace.runner.agent import append_transcript
    from carapace.runner.transcript import rebuild_conversation, transcript_path

    messages: list[Message] = [
        {"role": "user", "content": "héllo ü \u2028 \u0085 \"quoted\""},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "name": "read_file", "arguments": {"path": "ä", "n": 1.5}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "read_file", "content": "x",
         "is_error": False},
    ]  # fmt: skip
    enc = Encoded()
    enc.sync(messages[:2])  # the third is not kept: encoded on the spot
    sdir = tmp_path / "session"
    sdir.mkdir()
    append_transcript(sdir, "s1", messages, encoded=enc)
    append_transcript(sdir, "s1", messages)
    append_transcript(sdir, "s1", messages[:1], extra={"kind": "x"}, encoded=enc)
    path = transcript_path(sdir, "s1")
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == 7
    for got, want in zip(lines[:3], lines[3:6], strict=True):
        assert {**json.loads(got), "ts": 0} == {**json.loads(want), "ts": 0}  # (the times may
        assert got.split(",", 1)[1] == want.split(",", 1)[1]  # differ) the same bytes past it
        assert next(iter(json.loads(got))) == "ts"
    assert json.loads(lines[6])["kind"] == "x"
    shutil.rmtree(path.parent)  # removed under the runner
    append_transcript(sdir, "s1", messages[:1], encoded=enc)  # (logged, not raised)
    append_transcript(sdir, "s1", messages, encoded=enc)
    assert path.read_text(encoding="utf-8").count("\n") == 3
    # read back whole: a line is cut at "\n" only, not at the U+2028 in the person's text
    assert rebuild_conversation(sdir, "s1") == messages


def _inotify_instances() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "inotify" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # (closed meanwhile: the listing's own descriptor, another thread's)
            continue
    return n


def test_a_folder_watch_on_the_runners_watcher_shares_its_inotify_and_its_events(
    tmp_path: Path,
) -> None:
    """The memory folders are watched on the runner's own inotify instance: a second one
    per runner counts against the user's ``max_user_instances`` (128 by default, for every
    runner of the user together). The watcher's own changes are never lost to the folder
    watch's look, nor the folder watch's events reported as the watcher's."""
    from carapace.watch import FolderWatch

    session, memory = tmp_path / "session", tmp_path / "memory"
    session.mkdir()
    memory.mkdir()
    watcher = DirWatcher()
    try:
        watcher.add(session, names={"inbound.db"})
        before = _inotify_instances()
        fw = FolderWatch(watcher)
        assert fw.watch(str(memory)) and not fw.watch(str(tmp_path / "missing"))
        assert _inotify_instances() == before  # no instance of its own
        assert fw.changed() == set() and watcher.drain() == set()
        (memory / "CLAUDE.local.md").write_text("x")
        assert watcher.drain() == set()  # a memory file is no change of the session
        (session / "inbound.db").write_text("y")
        (memory / "CLAUDE.md").write_text("z")
        assert fw.changed() == {str(memory / "CLAUDE.local.md"), str(memory / "CLAUDE.md")}
        assert watcher.drain() == {session}  # read on the way by the look above, kept
        assert watcher.wait(0) == set()
        with open(memory / "agent.log", "w") as log:  # an agent's process writing a log
            assert fw.changed() == {str(memory / "agent.log")}  # (made)
            for i in range(20):
                log.write(f"line {i}\n")
                log.flush()
            ready, _, _ = select.select([watcher.fileno()], [], [], 0)
            assert not ready  # no wake of the runner's wait per write (only at the close)
        assert fw.changed() == {str(memory / "agent.log")}
        fw.close()
        (memory / "CLAUDE.md").write_text("zz")
        assert not fw.watch(str(memory)) and fw.changed() == set()
        (session / "inbound.db").write_text("yy")
        assert watcher.wait(5.0) == {session}  # the watcher itself goes on
    finally:
        watcher.close()


def test_a_runner_keeps_one_inotify_instance(tmp_path: Path) -> None:
    paths = make_session(tmp_path, routing=("telegram", "chat-1", None))
    agent_dir = make_agent_dir(tmp_path)
    (agent_dir / "CLAUDE.local.md").write_text("remember the milk")
    cfg = RunnerConfig.load(paths.root, agent_dir, provider="mock", environ={"CARAPACE_TZ": "UTC"})
    before = _inotify_instances()
    runner = Runner(cfg, create_provider(ProviderConfig(agent_dir=str(agent_dir))))
    try:
        runner.start()
        write_chat(paths, "one")
        assert runner.step()
        assert runner.memory_files._watch is not None
        assert runner.memory_files._watch.watch(str(agent_dir.resolve()))  # watched
        assert _inotify_instances() == before + 1  # the watcher's, shared
    finally:
        runner.close()
    assert _inotify_instances() == before
