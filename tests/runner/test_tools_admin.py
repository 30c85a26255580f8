"""The ``admin`` tool (the agent's ``ncl``, runner §12): the ``cli_request`` row, the wait for
the host's ``cli_response``, the rendering of frames; then end to end with real processes
(``carapace run`` + ``carapace send``, the mock provider scripted to call the tool)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from carapace.runner.config import RunnerConfig
from carapace.runner.inbound import Routing
from carapace.runner.loop import Runner
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.tools import Batch, ToolError
from carapace.runner.tools.admin import command_name, run_admin
from carapace.testing.sessions import (
    make_agent_dir,
    make_session,
    read_acks,
    read_outbound,
    write_message,
)
from carapace.watch import DirWatcher

Frame = Callable[[str], dict[str, Any]]


class Env:
    def __init__(self, tmp_path: Path, config: dict[str, Any] | None = None) -> None:
        self.paths = make_session(tmp_path, routing=("telegram", "chat-1", None))
        agent_dir = make_agent_dir(tmp_path, config=config)
        cfg = RunnerConfig.load(self.paths.root, agent_dir, provider="mock", environ={})
        prov = create_provider(ProviderConfig(agent_dir=str(agent_dir)))
        self.runner = Runner(cfg, prov, watcher=DirWatcher(poll_interval=0.02))
        self.runner.start()
        self.runner.ctx.batch = Batch(
            in_reply_to="m1", origin=Routing("telegram", "chat-1", None), ids=("m1",)
        )

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in read_outbound(self.paths) if r["kind"] == "system"]

    def respond(self, frame: Frame, *, decoy: bool = False) -> threading.Thread:
        """A stand-in host: answers the first ``cli_request`` row with ``frame(requestId)``."""

        def run() -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                reqs = self.requests()
                if reqs:
                    rid = reqs[0]["content"]["requestId"]
                    if decoy:  # another request's answer, and a row with the right id shape
                        self.write_response("cli-other", frame("cli-other"))
                    self.write_response(rid, frame(rid))
                    return
                time.sleep(0.01)

        t = threading.Thread(target=run)
        t.start()
        return t

    def write_response(self, rid: str, frame: dict[str, Any]) -> None:
        write_message(self.paths, kind="system", id=f"cli-resp-{rid}", trigger=0,
                      content={"type": "cli_response", "requestId": rid, "frame": frame})  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.runner.close()


def ok_frame(data: Any) -> Frame:
    return lambda rid: {"id": rid, "ok": True, "data": data}


def error_frame(code: str, message: str) -> Frame:
    return lambda rid: {"id": rid, "ok": False, "error": {"code": code, "message": message}}


def test_command_name() -> None:
    assert command_name("groups get") == "groups-get"
    assert command_name("  groups   config get ") == "groups-config-get"
    assert command_name("ncl destinations list") == "destinations-list"
    assert command_name("carapace admin members add") == "members-add"
    assert command_name("messaging-groups list") == "messaging-groups-list"
    assert command_name("help") == "help"


def test_request_row_wait_and_ack(env: Env) -> None:
    t = env.respond(ok_frame({"id": "ag-1", "folder": "main"}))
    res = env.runner.toolbox.call(
        "admin", {"command": "groups get", "args": {"agent-group-id": "ag-1", "--limit": 3,
                                                   "skip": None}},
    )  # fmt: skip
    t.join()
    assert not res.is_error, res.content
    [row] = env.requests()
    rid = row["id"]
    assert rid.startswith("cli-") and row["seq"] % 2 == 1
    assert row["content"] == {
        "action": "cli_request", "requestId": rid, "command": "groups-get",
        "args": {"agent-group-id": "ag-1", "limit": 3},
    }  # fmt: skip
    assert (row["platform_id"], row["channel_type"], row["thread_id"]) == (None, None, None)
    assert json.loads(res.content) == {
        "id": rid,
        "ok": True,
        "data": {"id": "ag-1", "folder": "main"},
    }
    assert read_acks(env.paths) == {f"cli-resp-{rid}": "completed"}
    assert env.paths.heartbeat.exists()


def test_only_the_matching_response_is_taken(env: Env) -> None:
    t = env.respond(ok_frame(["mine"]), decoy=True)
    res = env.runner.toolbox.call("admin", {"command": "destinations list"})
    t.join()
    assert json.loads(res.content)["data"] == ["mine"]
    acks = read_acks(env.paths)
    assert "cli-resp-cli-other" not in acks and list(acks.values()) == ["completed"]


def test_timeout(env: Env) -> None:
    with pytest.raises(ToolError, match=r"'groups-list' timed out after 0.2s"):
        run_admin(env.runner.ctx, {"command": "groups list"}, timeout_s=0.2)
    [row] = env.requests()  # the request stays; a late answer is acked by the poll loop
    assert row["content"]["command"] == "groups-list"


def test_error_frame_is_an_error(env: Env) -> None:
    t = env.respond(error_frame("forbidden", "in group scope only your own agent group"))
    res = env.runner.toolbox.call("admin", {"command": "groups get", "args": {"id": "ag-x"}})
    t.join()
    assert res.is_error
    assert "error (forbidden): in group scope only your own agent group" in res.content


def test_approval_pending_is_explained(env: Env) -> None:
    t = env.respond(error_frame("approval-pending", "members-add needs an admin's approval"))
    res = env.runner.toolbox.call("admin", {"command": "members add", "args": {"user": "u"}})
    t.join()
    assert not res.is_error
    assert "An admin must approve `members-add`" in res.content
    assert "arrive later as a message" in res.content


def test_bad_arguments(env: Env) -> None:
    assert env.runner.toolbox.call("admin", {"command": "  "}).is_error
    bad = env.runner.toolbox.call("admin", {"command": "groups get", "args": "x"})
    assert bad.is_error and "args must be a JSON object" in bad.content
    assert env.requests() == []


@pytest.mark.parametrize(("scope", "offered"), [(None, True), ("group", True),
                                                ("global", True), ("disabled", False)])  # fmt: skip
def test_offered_unless_cli_scope_disabled(
    tmp_path: Path, scope: str | None, offered: bool
) -> None:
    e = Env(tmp_path, config={"cliScope": scope} if scope else {})
    try:
        names = [s.name for s in e.runner.toolbox.specs()]
        assert ("admin" in names) is offered
        if not offered:
            assert e.runner.toolbox.call("admin", {"command": "help"}).content == (
                "Unknown tool: admin"
            )
    finally:
        e.runner.close()


# --- end to end: real host, real runner, the mock provider calling the tool -----------------

CARAPACE = [sys.executable, "-m", "carapace"]


def _wait_for(cond: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CARAPACE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    assert _cli("init", "--home", str(h)).returncode == 0
    with open(h / "carapace.toml", "a") as f:
        f.write('runner_backend = "subprocess"\n')
    yield h


def test_agent_runs_admin_commands_through_a_real_host(home: Path, tmp_path: Path) -> None:
    made = _cli("admin", "--home", str(home), "--json", "groups", "create", "--name", "Other",
                "--folder", "other")  # fmt: skip
    assert made.returncode == 0, made.stderr
    other = json.loads(made.stdout)["id"]
    [(main,)] = _rows(home / "data" / "v2.db", "SELECT id FROM agent_groups WHERE folder='main'")
    script = [
        {"match": "own group", "reply": "OWN {tool_result}",
         "tool_calls": [{"name": "admin", "arguments": {"command": "groups get"}}]},
        {"match": "other group", "reply": "OTHER {tool_result}",
         "tool_calls": [{"name": "admin", "arguments": {"command": "groups get",
                                                        "args": {"id": other}}}]},
        {"match": "add a member", "reply": "ADD {tool_result}",
         "tool_calls": [{"name": "admin", "arguments": {"command": "members add",
                                                        "args": {"user": "cli:friend"}}}]},
        {"reply": ""},  # host notes (the approval's outcome): no reply
    ]  # fmt: skip
    (home / "groups" / "main" / "mock-script.json").write_text(json.dumps(script))
    sock = home / "data" / "cli.sock"
    with open(tmp_path / "host.log", "ab") as log:
        host = subprocess.Popen([*CARAPACE, "run", "--home", str(home)],
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        _wait_for(sock.exists)

        def send(text: str) -> str:
            r = _cli("send", "--home", str(home), "--timeout", "20", text)
            assert r.returncode == 0, (r.stdout, r.stderr)
            return r.stdout

        own = send("show my own group")
        got = json.loads(own[own.index("OWN ") + 4 :].strip().splitlines()[0])
        assert got["ok"] is True and got["data"]["id"] == main and got["data"]["folder"] == "main"

        foreign = send("show the other group")
        assert "OTHER Error: error (forbidden):" in foreign, foreign

        add = send("please add a member")
        assert "ADD Approval requested" in add and "must approve `members-add`" in add, add
        [(action, payload)] = _rows(home / "data" / "v2.db",
                                    "SELECT action, payload FROM pending_approvals")  # fmt: skip
        assert action == "cli_command"
        frame = json.loads(payload)["frame"]
        assert frame["command"] == "members-add"
        assert frame["args"] == {"user": "cli:friend", "group": main}
        assert not _rows(home / "data" / "v2.db", "SELECT 1 FROM agent_group_members "
                         "WHERE user_id='cli:friend'")  # fmt: skip

        [d] = [p for p in (home / "data" / "v2-sessions").glob("*/sess-*") if p.is_dir()]
        reqs = _rows(d / "outbound.db", "SELECT id, seq FROM messages_out WHERE kind='system'")
        assert len(reqs) == 3 and all(seq % 2 == 1 for _, seq in reqs)
        acks = dict(_rows(d / "outbound.db", "SELECT message_id, status FROM processing_ack"))
        assert all(acks.get(f"cli-resp-{rid}") == "completed" for rid, _ in reqs), acks
    finally:
        host.send_signal(signal.SIGTERM)
        try:
            host.wait(15)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait(5)
