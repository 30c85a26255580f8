"""The agent's workspace on a RUNNING host: ``carapace run`` + ``carapace send`` with the real
anthropic/openai SDKs against a fake model server on loopback.

The fake model asks for each tool in turn (read CLAUDE.local.md, edit it, bash, web_fetch
from a local HTTP server, path escapes), then answers; we check the files, the tool
results the model saw, the refusals, the composed prompt, resume after SIGKILL and
compaction under a tiny context limit (nothing delivered twice).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from carapace.runner.compaction import COMPACTION_MARKER
from carapace.runner.workspace_specs import BASH_NOT_SANDBOXED
from carapace.testing.fake_llm import FakeLLMProcess, FakeReply, FakeToolCall

CARAPACE = [sys.executable, "-m", "carapace"]
NANOCLAW_CLAUDE_MD = "# Ops rules\n\nAlways answer in one line. Rule marker: OPS-RULE-17.\n"
MEMORY = "# Memory\n\n- The secret word is PLUM.\n- nothing else yet\n"
PAGE = "<html><head><title>t</title></head><body><h1>Weather</h1><p>Sunny, 21 C</p></body></html>"


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([*CARAPACE, *args[:1], "--home", str(home), *args[1:]],
                       capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def admin(home: Path, *args: str) -> str:
    r = subprocess.run([*CARAPACE, "admin", "--home", str(home), *args],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class Host:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        sock = self.home / "data" / "cli.sock"
        sock.unlink(missing_ok=True)
        with open(self.home.parent / "host.log", "ab") as log:
            self.proc = subprocess.Popen([*CARAPACE, "run", "--home", str(self.home)],
                                         stdout=subprocess.DEVNULL, stderr=log, env=self.env)  # fmt: skip
        wait_for(sock.exists)

    def send(self, text: str) -> str:
        return cli(self.home, "send", "--timeout", "30", text, env=self.env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def session_dir(self) -> Path:
        [d] = [p for p in (self.home / "data" / "v2-sessions").glob("*/*") if p.is_dir()]
        return d


@pytest.fixture
def web() -> Iterator[str]:
    """A local HTTP server with one page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    finally:
        server.shutdown()
        server.server_close()


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    subprocess.run([*CARAPACE, "init", "--home", str(home)], check=True, capture_output=True)
    group = home / "groups" / "main"
    # A NanoClaw group folder, used as it is.
    (group / "CLAUDE.md").write_text(NANOCLAW_CLAUDE_MD, encoding="utf-8")
    (group / "CLAUDE.local.md").write_text(MEMORY, encoding="utf-8")
    (group / "etc-link").symlink_to("/etc")
    (group / "db-link").symlink_to(home / "data" / "v2.db")
    return home


def host_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    env.pop("CARAPACE_SANDBOX", None)
    env.update(extra)
    return env


def tool_results(request: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """tool_use_id → (content, is_error) of the Anthropic request's last user message."""
    out: dict[str, tuple[str, bool]] = {}
    for block in request["messages"][-1]["content"]:
        if block.get("type") == "tool_result":
            out[block["tool_use_id"]] = (str(block["content"]), bool(block.get("is_error")))
    return out


def call(name: str, cid: str, **arguments: Any) -> FakeToolCall:
    return FakeToolCall(name, arguments, id=cid)


def test_anthropic_tools_on_a_running_host_and_resume_after_sigkill(
    tmp_path: Path, web: str
) -> None:
    home = make_home(tmp_path)
    script = [
        FakeReply(tool_calls=(call("read_file", "t1", path="CLAUDE.local.md"),)),
        FakeReply(
            tool_calls=(
                call(
                    "edit_file",
                    "t2",
                    path="CLAUDE.local.md",
                    old_string="- nothing else yet",
                    new_string="- The user asked for the weather.",
                ),
            )
        ),
        FakeReply(tool_calls=(call("bash", "t3", command="echo $((6*7)) > out.txt; cat out.txt"),)),
        FakeReply(tool_calls=(call("web_fetch", "t4", url=web),)),
        FakeReply(
            tool_calls=(
                call("write_file", "w1", path="notes/weather.md", content="sunny PLUM-NOTE\n"),
                call("list_files", "w2", path="notes"),
                call("grep", "w3", pattern="PLUM-NOTE", path="."),
            )
        ),
        FakeReply(
            tool_calls=(
                call("read_file", "e1", path="../../data/v2.db"),
                call("read_file", "e2", path="/etc/passwd"),
                call("read_file", "e3", path="etc-link/passwd"),
                call("read_file", "e4", path="db-link"),
                call("write_file", "e5", path="../escaped.txt", content="x"),
            )
        ),
        FakeReply(text="Done: the word is PLUM, 6*7=42, and it is sunny."),
        FakeReply(text="Second answer after the restart."),
    ]
    with FakeLLMProcess(script, workdir=tmp_path / "llm", flavour="anthropic") as llm:
        admin(home, "groups", "config", "update", "main", "--provider", "anthropic",
              "--settings", json.dumps({"base_url": llm.base_url, "bash": "allowed",
                                        "web": True, "web_private": True}))  # fmt: skip
        prompt = admin(home, "groups", "prompt", "main")
        assert "OPS-RULE-17" in prompt and "The secret word is PLUM." in prompt
        host = Host(home, host_env(ANTHROPIC_API_KEY="sk-test"))
        host.start()
        try:
            out = host.send("Please do the weather chores.")
            assert "Done: the word is PLUM, 6*7=42, and it is sunny." in out
            reqs = llm.requests()
            assert len(reqs) == 7
            system = reqs[0]["system"]
            system = system if isinstance(system, str) else system[0]["text"]
            assert "OPS-RULE-17" in system and "The secret word is PLUM." in system
            tools = {t["name"] for t in reqs[0]["tools"]}
            assert {"bash", "read_file", "edit_file", "web_fetch", "send_message"} <= tools
            read, _ = tool_results(reqs[1])["t1"]
            assert "The secret word is PLUM." in read
            assert tool_results(reqs[2])["t2"][1] is False
            bash_out, bash_err = tool_results(reqs[3])["t3"]
            assert "42" in bash_out and not bash_err
            page, page_err = tool_results(reqs[4])["t4"]
            assert "Sunny, 21 C" in page and not page_err and "<p>" not in page
            files = tool_results(reqs[5])
            assert not any(err for _, err in files.values()), files
            assert "weather.md" in files["w2"][0] and "notes/weather.md" in files["w3"][0]
            escapes = tool_results(reqs[6])
            for cid in ("e1", "e2", "e3", "e4", "e5"):
                text, is_error = escapes[cid]
                assert is_error and "outside the workspace" in text, (cid, text)
            group = home / "groups" / "main"
            assert "- The user asked for the weather." in (group / "CLAUDE.local.md").read_text()
            assert (group / "out.txt").read_text().strip() == "42"
            assert not (home / "groups" / "escaped.txt").exists()
            d = host.session_dir()
            transcript = d / "conversations" / f"{d.name}.jsonl"
            assert "Sunny, 21 C" in transcript.read_text()

            # SIGKILL the runner: the next runner resumes the conversation.
            pid = int((d / ".runner.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            assert "Second answer after the restart." in host.send("And now?")
            last = llm.requests()[-1]
            texts = json.dumps(last["messages"])
            assert "Please do the weather chores." in texts and "Sunny, 21 C" in texts
        finally:
            host.stop()
    answered = rows(d / "outbound.db", "SELECT in_reply_to, COUNT(*) FROM messages_out GROUP BY 1")
    assert len(answered) == 2 and all(n == 1 for _, n in answered)


def test_openai_bash_refused_unsandboxed_and_compaction_sends_nothing_twice(
    tmp_path: Path, web: str
) -> None:
    home = make_home(tmp_path)
    script = [
        FakeReply(tool_calls=(FakeToolCall("bash", {"command": "id"}, id="b1"),)),
        FakeReply(text="First answer: no shell here. " + "x" * 600),
        FakeReply(text="Summary: the user asked for chores; answered already."),
        FakeReply(text="Second answer."),
    ]
    with FakeLLMProcess(script, workdir=tmp_path / "llm", flavour="openai") as llm:
        settings = {
            "base_url": llm.base_url,
            "bash": "sandboxed",
            "context_limit_chars": 800,
            "sandbox": "subprocess",  # the host's per-group backend: no isolation
        }
        admin(home, "groups", "config", "update", "main", "--provider", "openai",
              "--model", "gpt-test", "--settings", json.dumps(settings))  # fmt: skip
        host = Host(home, host_env(OPENAI_API_KEY="sk-test"))
        host.start()
        try:
            assert "First answer: no shell here." in host.send("Run id please.")
            reqs = llm.requests()
            tool_msg = reqs[1]["messages"][-1]
            assert tool_msg["role"] == "tool" and BASH_NOT_SANDBOXED in tool_msg["content"]
            out = host.send("Second question.")
            assert "Second answer." in out and "First answer" not in out
            reqs = llm.requests()
            assert len(reqs) == 4
            assert reqs[2]["messages"][0]["content"].startswith(COMPACTION_MARKER)
            assert not reqs[2].get("tools")
            final = json.dumps(reqs[3]["messages"])
            assert "Summary: the user asked for chores" in final and "x" * 600 not in final
            d = host.session_dir()
        finally:
            host.stop()
    outs = rows(d / "outbound.db", "SELECT content FROM messages_out ORDER BY seq")
    assert len(outs) == 2
    assert "First answer" in outs[0][0] and "Second answer." in outs[1][0]
    transcript = d / "conversations" / f"{d.name}.jsonl"
    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    [event] = [e for e in events if e.get("type") == "compaction"]
    assert event["replaced"] >= 3 and "Summary:" in event["message"]["content"]
