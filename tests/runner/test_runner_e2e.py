"""The runner as a process (``python -m carapace.runner``) on real session folders:
NanoClaw-format files, wake-up, SIGTERM, SIGKILL recovery, and the real provider SDKs
against the fake model servers on loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.db.session import SessionPaths
from carapace.testing.fake_llm import FakeError, FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.runner_proc import run_env, run_once, runner_cmd
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_acks,
    read_outbound,
    write_chat,
)

# NanoClaw v2's session schema, written out here as NanoClaw creates it (spec/host.md §2.3-2.4)
NANOCLAW_INBOUND = """
CREATE TABLE messages_in (
  id TEXT PRIMARY KEY, seq INTEGER UNIQUE, kind TEXT NOT NULL, timestamp TEXT NOT NULL,
  status TEXT DEFAULT 'pending', process_after TEXT, recurrence TEXT, series_id TEXT,
  tries INTEGER DEFAULT 0, trigger INTEGER NOT NULL DEFAULT 1, platform_id TEXT,
  channel_type TEXT, thread_id TEXT, content TEXT NOT NULL, source_session_id TEXT,
  on_wake INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_messages_in_series ON messages_in(series_id);
CREATE TABLE delivered (
  message_out_id TEXT PRIMARY KEY, platform_message_id TEXT,
  status TEXT NOT NULL DEFAULT 'delivered', delivered_at TEXT NOT NULL
);
CREATE TABLE destinations (
  name TEXT PRIMARY KEY, display_name TEXT, type TEXT NOT NULL, channel_type TEXT,
  platform_id TEXT, agent_group_id TEXT
);
CREATE TABLE session_routing (
  id INTEGER PRIMARY KEY CHECK (id = 1), channel_type TEXT, platform_id TEXT, thread_id TEXT
);
"""
NANOCLAW_OUTBOUND = """
CREATE TABLE messages_out (
  id TEXT PRIMARY KEY, seq INTEGER UNIQUE, in_reply_to TEXT, timestamp TEXT NOT NULL,
  deliver_after TEXT, recurrence TEXT, kind TEXT NOT NULL, platform_id TEXT,
  channel_type TEXT, thread_id TEXT, content TEXT NOT NULL
);
CREATE TABLE processing_ack (
  message_id TEXT PRIMARY KEY, status TEXT NOT NULL, status_changed TEXT NOT NULL
);
"""


def nanoclaw_session(root: Path) -> SessionPaths:
    paths = SessionPaths(root / "data" / "v2-sessions" / "ag-1" / "sess-1")
    paths.outbox.mkdir(parents=True)
    for db, schema in ((paths.inbound, NANOCLAW_INBOUND), (paths.outbound, NANOCLAW_OUTBOUND)):
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.executescript(schema)
        conn.close()
    conn = sqlite3.connect(paths.inbound)
    conn.execute(
        "INSERT INTO destinations VALUES ('discord-main', 'Main', 'channel', 'discord', "
        "'chan-1', NULL)"
    )
    conn.execute("INSERT INTO session_routing VALUES (1, 'discord', 'chan-1', NULL)")
    conn.execute(
        "INSERT INTO messages_in (id, seq, kind, timestamp, status, platform_id, channel_type, "
        "thread_id, content) VALUES ('1234:ag-1', 2, 'chat', '2026-02-04T18:30:00.000Z', "
        "'pending', 'chan-1', 'discord', 'th-1', ?)",
        (json.dumps({"text": "What is the capital of France?", "sender": "Bob"}),),
    )
    conn.commit()
    conn.close()
    return paths


def wait_for(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    return make_session(
        tmp_path,
        destinations=[channel_dest("family", "telegram", "chat-1")],
        routing=("telegram", "chat-1", None),
    )


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(
        paths: SessionPaths, agent_dir: Path, *extra: str, **env: str
    ) -> subprocess.Popen[str]:
        log = (tmp_path / f"runner-{len(procs)}.log").open("w")
        p = subprocess.Popen(
            runner_cmd(paths, agent_dir, *extra), env=run_env(**env), stderr=log, text=True
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_answers_a_nanoclaw_session_with_the_mock(tmp_path: Path) -> None:
    paths = nanoclaw_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"})
    result = run_once(paths, agent_dir, timeout=30)
    assert result.returncode == 0, result.stderr
    [row] = read_outbound(paths)
    assert row["seq"] == 3 and row["kind"] == "chat" and row["in_reply_to"] == "1234:ag-1"
    assert (row["platform_id"], row["channel_type"], row["thread_id"]) == (
        "chan-1", "discord", "th-1",
    )  # fmt: skip
    assert "What is the capital of France?" in row["content"]["text"]
    assert read_acks(paths) == {"1234:ag-1": "completed"}
    # the runner added the state tables NanoClaw's runner creates lazily
    conn = sqlite3.connect(paths.outbound)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"session_state", "container_state"} <= tables


def test_inbound_db_is_never_written(tmp_path: Path) -> None:
    paths = nanoclaw_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path)
    before = paths.inbound.read_bytes()
    os.chmod(paths.inbound, 0o444)
    result = run_once(paths, agent_dir, timeout=30)
    assert result.returncode == 0, result.stderr
    assert paths.inbound.read_bytes() == before
    assert read_acks(paths) == {"1234:ag-1": "completed"}


def test_wakes_on_new_message_and_stops_on_sigterm(
    session: SessionPaths, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    agent_dir = make_agent_dir(tmp_path, mock_script=[{"match": "ping", "reply": "pong"}])
    proc = spawn(session, agent_dir)
    wait_for(session.heartbeat.exists)
    time.sleep(0.2)
    write_chat(session, "ping", id="m1")
    # that a notification (not the 5 s safety poll) woke it is tests/runner/test_watch.py's
    # subject; a wall-clock bound here flaked under load
    wait_for(lambda: read_acks(session).get("m1") == "completed", timeout=30.0)
    assert [r["content"]["text"] for r in read_outbound(session)] == ["pong"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


def _ask_script(timeout: int = 60) -> list[dict[str, Any]]:
    return [{"match": "hello", "tool_calls": [{"name": "ask_user_question", "arguments": {
        "title": "t", "question": "q", "options": ["a"], "timeout": timeout}}],
        "reply": "after question"}]  # fmt: skip


def test_sigkill_mid_batch_then_restart_answers_once(
    session: SessionPaths, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    agent_dir = make_agent_dir(tmp_path, mock_script=_ask_script())
    write_chat(session, "hello", id="m1")
    proc = spawn(session, agent_dir)
    wait_for(lambda: any(r["kind"] == "chat-sdk" for r in read_outbound(session)))
    assert read_acks(session) == {"m1": "processing"}
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=5)
    (agent_dir / "mock-script.json").write_text(json.dumps([{"match": "hello", "reply": "hi!"}]))
    result = run_once(session, agent_dir)
    assert result.returncode == 0, result.stderr
    assert "released 1 stale processing claim" in result.stderr
    texts = [r["content"].get("text") for r in read_outbound(session) if r["kind"] == "chat"]
    assert texts == ["hi!"]
    assert read_acks(session) == {"m1": "completed"}


def test_sigterm_mid_turn_releases_the_claim(
    session: SessionPaths, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    agent_dir = make_agent_dir(tmp_path, mock_script=_ask_script())
    write_chat(session, "hello", id="m1")
    proc = spawn(session, agent_dir)
    wait_for(lambda: any(r["kind"] == "chat-sdk" for r in read_outbound(session)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert read_acks(session) == {}  # released: the next runner takes it again
    assert not [r for r in read_outbound(session) if r["kind"] == "chat"]


def test_question_answered_while_runner_waits(
    session: SessionPaths, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    from carapace.testing.sessions import write_question_response

    script = [{"match": "hello", "tool_calls": [{"name": "ask_user_question", "arguments": {
        "title": "t", "question": "q", "options": ["a", "b"]}}],
        "reply": "you chose {tool_result}"}]  # fmt: skip
    agent_dir = make_agent_dir(tmp_path, mock_script=script)
    write_chat(session, "hello", id="m1")
    spawn(session, agent_dir)
    card = wait_for(lambda: [r for r in read_outbound(session) if r["kind"] == "chat-sdk"])
    write_question_response(session, card[0]["id"], "b")
    wait_for(lambda: read_acks(session).get("m1") == "completed")
    assert read_outbound(session)[-1]["content"]["text"] == "you chose b"
    assert sorted(read_acks(session).values()) == ["completed", "completed"]


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_real_sdk_tool_round_trip_and_resume(
    flavour: str, session: SessionPaths, tmp_path: Path
) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": flavour, "model": "m-1"})
    script = [
        FakeReply(tool_calls=(FakeToolCall("send_message", {"text": "working on it"}),)),
        FakeReply(text="Paris."),
        FakeReply(text="Still Paris."),
    ]
    with FakeLLMServer(script, flavour=flavour) as srv:  # type: ignore[arg-type]
        env = {
            f"{flavour.upper()}_BASE_URL": srv.base_url,
            f"{flavour.upper()}_API_KEY": "test-key",
        }
        write_chat(session, "capital of France?", id="m1")
        result = run_once(session, agent_dir, **env)
        assert result.returncode == 0, result.stderr
        assert [r["content"]["text"] for r in read_outbound(session)] == ["working on it", "Paris."]
        write_chat(session, "sure?", id="m2")
        result = run_once(session, agent_dir, **env)  # a new process resumes the conversation
        assert result.returncode == 0, result.stderr
        requests = list(srv.requests)
    assert read_outbound(session)[-1]["content"]["text"] == "Still Paris."
    assert read_acks(session) == {"m1": "completed", "m2": "completed"}
    assert len(requests) == 3
    last = json.dumps(requests[2]["messages"])
    assert "capital of France?" in last and "working on it" in last and "sure?" in last
    tool_names = [t.get("name") or t.get("function", {}).get("name") for t in requests[0]["tools"]]
    assert "send_message" in tool_names and "ask_user_question" in tool_names


@pytest.mark.parametrize("flavour", ["anthropic", "openai"])
def test_real_sdk_error_fails_the_ack_and_tells_the_user(
    flavour: str, session: SessionPaths, tmp_path: Path
) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": flavour})
    with FakeLLMServer([FakeError(400, "bad request: model not found")], flavour=flavour) as srv:  # type: ignore[arg-type]
        write_chat(session, "hi", id="m1")
        result = run_once(
            session,
            agent_dir,
            **{f"{flavour.upper()}_BASE_URL": srv.base_url, f"{flavour.upper()}_API_KEY": "k"},
        )
    assert result.returncode == 0, result.stderr
    [row] = read_outbound(session)
    assert row["content"]["text"].startswith("Sorry — the model provider failed: ")
    assert "model not found" in row["content"]["text"]
    assert "test-key" not in result.stderr
    assert read_acks(session) == {"m1": "failed"}
