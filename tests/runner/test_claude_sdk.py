"""The Claude Agent SDK provider: its bundled Claude Code CLI against the fake Anthropic
server, calling carapace's tools through the in-process MCP server, resumed next turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carapace.db.session import SessionPaths
from carapace.testing.fake_llm import FakeLLMServer, FakeReply, FakeToolCall
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_outbound,
    write_chat,
)

pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_once(
    paths: SessionPaths, agent_dir: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "OPENAI_", "CARAPACE_"))}  # fmt: skip
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    cmd = [sys.executable, "-m", "carapace.runner", "--session-dir", str(paths.root),
           "--agent-dir", str(agent_dir), "--idle-exit", "0.3"]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_claude_code_calls_carapace_tools_and_resumes(tmp_path: Path) -> None:
    session = make_session(tmp_path, destinations=[channel_dest("family", "telegram", "chat-1")],
                           routing=("telegram", "chat-1", None))  # fmt: skip
    agent_dir = make_agent_dir(tmp_path, config={"provider": "claude-agent-sdk"})
    script = [
        FakeReply(tool_calls=(FakeToolCall("mcp__carapace__send_message", {"text": "on it"}),)),
        FakeReply(text="Paris."),
        FakeReply(text="Still Paris."),
    ]
    with FakeLLMServer(script) as srv:
        env = {"ANTHROPIC_BASE_URL": srv.base_url, "ANTHROPIC_API_KEY": "test-key"}
        write_chat(session, "capital of France?", id="m1")
        first = run_once(session, agent_dir, **env)
        assert first.returncode == 0, first.stderr
        write_chat(session, "sure?", id="m2")
        second = run_once(session, agent_dir, **env)
        assert second.returncode == 0, second.stderr
        requests = list(srv.requests)
        assert srv.structure_errors == []
    texts = [r["content"]["text"] for r in read_outbound(session)]
    assert texts == ["on it", "Paris.", "Still Paris."]
    # the second runner resumed the SDK session: the first exchange is in its request
    last = json.dumps(requests[-1]["messages"])
    assert "capital of France?" in last and "sure?" in last
    assert {t["name"] for t in requests[0]["tools"]} >= {"mcp__carapace__send_message"}
    assert not any(t["name"] in ("Bash", "Read", "Write") for t in requests[0]["tools"])
