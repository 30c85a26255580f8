"""Every agent tool's messages_out row and error texts (spec §8), called through the ToolBox."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from carapace.runner.config import RunnerConfig
from carapace.runner.inbound import Routing
from carapace.runner.loop import Runner
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers.base import ToolResult
from carapace.runner.tools import TOOL_NAMES, Batch
from carapace.testing.sessions import (
    agent_dest,
    channel_dest,
    make_agent_dir,
    make_session,
    mark_delivered,
    read_acks,
    read_outbound,
    set_destinations,
    set_routing,
    write_chat,
    write_message,
    write_question_response,
)
from carapace.watch import DirWatcher

DESTS = [channel_dest("family", "telegram", "chat-1"), agent_dest("helper", "ag-helper")]


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.paths = make_session(
            tmp_path, destinations=DESTS, routing=("telegram", "chat-1", "t-s")
        )
        self.agent_dir = make_agent_dir(tmp_path)
        cfg = RunnerConfig.load(
            self.paths.root, self.agent_dir, provider="mock",
            environ={"CARAPACE_TZ": "America/New_York"},
        )  # fmt: skip
        prov = create_provider(ProviderConfig(agent_dir=str(self.agent_dir)))
        self.runner = Runner(cfg, prov, watcher=DirWatcher(use_inotify=False))
        self.runner.start()
        self.runner.ctx.batch = Batch(
            in_reply_to="m1", origin=Routing("telegram", "chat-1", "t-1"), ids=("m1",)
        )

    def call(self, tool_name: str, /, **args: Any) -> ToolResult:
        return self.runner.toolbox.call(tool_name, args)

    def out(self) -> list[dict[str, Any]]:
        return read_outbound(self.paths)

    def last(self) -> dict[str, Any]:
        return self.out()[-1]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.runner.close()


def test_fifteen_tools_in_order() -> None:
    assert TOOL_NAMES == (
        "send_message", "send_file", "edit_message", "add_reaction", "schedule_task",
        "list_tasks", "update_task", "cancel_task", "pause_task", "resume_task",
        "ask_user_question", "send_card", "create_agent", "install_packages", "add_mcp_server",
        "admin",
    )  # fmt: skip


def test_unknown_tool_and_bad_types(env: Env) -> None:
    assert env.call("nope").content == "Unknown tool: nope"
    bad = env.call("send_message", text=5)
    assert bad.is_error and "text must be a JSON string" in bad.content
    assert env.call("install_packages", apt=[1]).is_error
    assert env.out() == []


def test_send_message_to_current_conversation(env: Env) -> None:
    res = env.call("send_message", text="hi")
    row = env.last()
    assert res.content == f"Message sent to (current conversation) (id: {row['seq']})"
    assert row["seq"] % 2 == 1 and row["kind"] == "chat" and row["id"].startswith("msg-")
    assert (row["channel_type"], row["platform_id"], row["thread_id"]) == (
        "telegram", "chat-1", "t-1",
    )  # fmt: skip
    assert row["in_reply_to"] == "m1" and row["content"] == {"text": "hi"}


def test_send_message_named_destinations(env: Env) -> None:
    env.call("send_message", to="helper", text="yo")
    row = env.last()
    assert (row["channel_type"], row["platform_id"], row["thread_id"]) == (
        "agent", "ag-helper", None,
    )  # fmt: skip
    env.call("send_message", to="family", text="x")
    assert env.last()["thread_id"] == "t-1"  # same channel as the origin: its thread


def test_send_message_errors(env: Env) -> None:
    assert env.call("send_message", text="").content == "Error: text is required"
    assert env.call("send_message", to="zz", text="a").content == (
        'Error: Unknown destination "zz". Known: family, helper'
    )
    env.runner.ctx.batch = Batch()
    set_routing(env.paths, None, None, None)
    assert env.call("send_message", text="a").content == (
        'Error: You have multiple destinations — specify "to". Options: family, helper'
    )
    set_destinations(env.paths, [])
    assert env.call("send_message", text="a").content == "Error: No destinations configured."
    set_destinations(env.paths, [DESTS[0]])
    assert not env.call("send_message", text="a").is_error
    assert env.last()["platform_id"] == "chat-1" and env.last()["thread_id"] is None


def test_send_file(env: Env) -> None:
    (env.agent_dir / "report.txt").write_text("data")
    res = env.call("send_file", path="report.txt", text="here")
    row = env.last()
    assert res.content == (
        f"File sent to (current conversation) (id: {row['seq']}, filename: report.txt)"
    )
    assert row["content"] == {"text": "here", "files": ["report.txt"]}
    assert row["in_reply_to"] == "m1"
    assert (env.paths.outbox / row["id"] / "report.txt").read_text() == "data"
    env.call("send_file", path="report.txt", filename="renamed.txt")
    assert env.last()["content"] == {"text": "", "files": ["renamed.txt"]}


def test_send_file_refusals(env: Env) -> None:
    (env.agent_dir / "f.txt").write_text("x")
    (env.agent_dir / "sub").mkdir()
    os.symlink("/etc/passwd", env.agent_dir / "link")
    assert env.call("send_file").content == "Error: path is required"
    assert env.call("send_file", path="missing.txt").content == "Error: File not found: missing.txt"
    assert env.call("send_file", path="sub").content == "Error: Not a regular file: sub"
    for name in ("../../inbound.db", "a/b", ".hidden", ".."):
        res = env.call("send_file", path="f.txt", filename=name)
        assert res.is_error and "Invalid filename" in res.content
    assert env.call("send_file", path="/etc/passwd").is_error
    assert env.call("send_file", path="link").is_error
    assert env.call("send_file", path="../../etc/passwd").is_error
    assert env.out() == []


def test_edit_and_reaction(env: Env) -> None:
    seq_in = write_chat(env.paths, "user msg", id="plat-77:ag-test", thread_id="t-x")
    env.call("send_message", text="mine")
    mine = env.last()
    assert env.call("edit_message", messageId=mine["seq"], text="fixed").content == (
        f"Message edit queued for #{mine['seq']}"
    )
    edit = env.last()
    assert edit["content"] == {"operation": "edit", "messageId": mine["id"], "text": "fixed"}
    assert edit["in_reply_to"] is None and edit["thread_id"] == "t-1"
    mark_delivered(env.paths, mine["id"], "tg-555")
    env.call("edit_message", messageId=mine["seq"], text="again")
    assert env.last()["content"]["messageId"] == "tg-555"
    assert env.call("add_reaction", messageId=seq_in, emoji="thumbs_up").content == (
        f"Reaction queued for #{seq_in}"
    )
    react = env.last()
    assert react["content"] == {
        "operation": "reaction", "messageId": "plat-77", "emoji": "thumbs_up",
    }  # fmt: skip
    assert (react["channel_type"], react["platform_id"], react["thread_id"]) == (
        "telegram", "chat-1", "t-x",
    )  # fmt: skip


def test_edit_and_reaction_errors(env: Env) -> None:
    assert env.call("edit_message", messageId=0, text="x").content == (
        "Error: messageId and text are required"
    )
    assert env.call("add_reaction", messageId=3, emoji="").content == (
        "Error: messageId and emoji are required"
    )
    assert env.call("edit_message", messageId=999, text="x").content == (
        "Error: Message #999 not found"
    )
    seq = write_message(env.paths, kind="task", content={"prompt": "p"})
    assert env.call("add_reaction", messageId=seq, emoji="x").content == (
        f"Error: Cannot determine destination for message #{seq}"
    )


def test_schedule_task(env: Env) -> None:
    res = env.call(
        "schedule_task", prompt="water plants", processAfter="2099-01-15T09:00:00",
        recurrence="0 9 * * 1",
    )  # fmt: skip
    row = env.last()
    task_id = row["id"]
    assert task_id.startswith("task-") and row["kind"] == "system"
    assert res.content == (
        f"Task scheduled (id: {task_id}, runs at: 2099-01-15T14:00:00.000Z, recurrence: 0 9 * * 1)"
    )
    assert row["content"] == {
        "action": "schedule_task", "taskId": task_id, "prompt": "water plants", "script": None,
        "processAfter": "2099-01-15T14:00:00.000Z", "recurrence": "0 9 * * 1",
        "platformId": "chat-1", "channelType": "telegram", "threadId": "t-1",
        "timezone": "America/New_York",
    }  # fmt: skip
    assert (row["platform_id"], row["channel_type"], row["thread_id"]) == (
        "chat-1", "telegram", "t-1",
    )  # fmt: skip


def test_schedule_task_validation(env: Env) -> None:
    assert env.call("schedule_task", prompt="p").content == (
        "Error: prompt and processAfter are required"
    )
    assert env.call("schedule_task", prompt="p", processAfter="tomorrow").content == (
        "Error: invalid processAfter: tomorrow"
    )
    past = env.call("schedule_task", prompt="p", processAfter="2001-01-01T00:00:00Z")
    assert past.is_error and "in the past" in past.content
    cron = env.call("schedule_task", prompt="p", processAfter="2099-01-01T00:00:00Z",
                    recurrence="61 * * * *")  # fmt: skip
    assert cron.is_error and cron.content.startswith("Error: invalid recurrence:")
    tz = env.call("schedule_task", prompt="p", processAfter="2099-01-01T00:00:00",
                  timezone="Mars/Olympus")  # fmt: skip
    assert tz.is_error and "invalid timezone" in tz.content
    assert env.out() == []
    ok = env.call("schedule_task", prompt="p", processAfter="2099-06-15T09:00:00",
                  timezone="Asia/Tokyo")  # fmt: skip
    assert "runs at: 2099-06-15T00:00:00.000Z" in ok.content


def test_list_and_task_actions(env: Env) -> None:
    assert env.call("list_tasks").content == "No tasks found."
    write_message(env.paths, kind="task", id="task-1", content={"prompt": "daily report"},
                  process_after="2099-01-01T14:00:00.000Z", recurrence="0 9 * * *")  # fmt: skip
    listed = env.call("list_tasks").content
    assert listed.startswith("- task-1 [pending] at=Jan 1, 2099, 9:00 AM")
    assert "recur=0 9 * * * → daily report" in listed
    env.call("schedule_task", prompt="new one", processAfter="2099-02-01T00:00:00Z")
    assert "[scheduling]" in env.call("list_tasks").content
    for tool, verb in (("cancel_task", "cancellation"), ("pause_task", "pause"),
                       ("resume_task", "resume")):  # fmt: skip
        assert env.call(tool, taskId="task-1").content == f"Task {verb} requested: task-1"
        row = env.last()
        assert row["content"] == {"action": tool, "taskId": "task-1"}
        assert row["kind"] == "system" and row["id"].startswith("sys-")
        assert row["platform_id"] is None and row["channel_type"] is None
    assert env.call("cancel_task").content == "Error: taskId is required"
    missing = env.call("pause_task", taskId="task-nope")
    assert missing.is_error and 'No task with id "task-nope"' in missing.content


def test_update_task(env: Env) -> None:
    write_message(env.paths, kind="task", id="task-1", content={"prompt": "p"})
    assert env.call("update_task", taskId="task-1").content == (
        "Error: at least one field to update is required"
    )
    # no workspace here, so bash is off: a script is refused (scripts obey the bash setting)
    refused = env.call("update_task", taskId="task-1", script="echo")
    assert refused.is_error and "script refused: bash is off" in refused.content
    res = env.call("update_task", taskId="task-1", prompt="new", recurrence="", script="",
                   processAfter="2099-01-15T09:00:00")  # fmt: skip
    assert res.content == "Task update requested: task-1"
    assert env.last()["content"] == {
        "action": "update_task", "taskId": "task-1", "prompt": "new",
        "processAfter": "2099-01-15T14:00:00.000Z", "recurrence": None, "script": None,
    }  # fmt: skip
    assert env.call("update_task", taskId="task-1", recurrence="bad").is_error


def test_ask_user_question_answered(env: Env) -> None:
    def answer() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rows = [r for r in read_outbound(env.paths) if r["kind"] == "chat-sdk"]
            if rows:
                write_question_response(env.paths, rows[0]["id"], "yes-value")
                return
            time.sleep(0.02)

    t = threading.Thread(target=answer)
    t.start()
    res = env.call("ask_user_question", title="Deploy?", question="Ship it?",
                   options=["No", {"label": "Yes", "value": "yes-value"}])  # fmt: skip
    t.join()
    assert res.content == "yes-value" and not res.is_error
    row = next(r for r in env.out() if r["kind"] == "chat-sdk")
    assert row["content"] == {
        "type": "ask_question", "questionId": row["id"], "title": "Deploy?",
        "question": "Ship it?", "options": [
            {"label": "No", "selectedLabel": "No", "value": "No"},
            {"label": "Yes", "selectedLabel": "Yes", "value": "yes-value"},
        ],
    }  # fmt: skip
    assert (row["channel_type"], row["platform_id"], row["thread_id"]) == (
        "telegram", "chat-1", "t-1",
    )  # fmt: skip
    assert list(read_acks(env.paths).values()) == ["completed"]
    assert env.paths.heartbeat.exists()


def test_ask_user_question_timeout_and_errors(env: Env) -> None:
    assert env.call("ask_user_question", title="t", question="q", options=[]).content == (
        "Error: title, question, and options are required"
    )
    res = env.call("ask_user_question", title="t", question="q", options=["a"], timeout=0.2)
    assert res.content == "Error: Question timed out after 0.2s"
    env.runner.ctx.batch = Batch()
    set_routing(env.paths, None, None, None)
    nowhere = env.call("ask_user_question", title="t", question="q", options=["a"])
    assert nowhere.is_error and "no conversation" in nowhere.content


def test_send_card(env: Env) -> None:
    assert env.call("send_card").content == "Error: card is required"
    card = {"title": "T", "actions": [{"label": "Docs", "url": "https://x"}]}
    res = env.call("send_card", card=card)
    row = env.last()
    assert res.content == f"Card sent (id: {row['id']})"
    assert row["kind"] == "chat-sdk"
    assert row["content"] == {"type": "card", "card": card, "fallbackText": ""}


def test_create_agent(env: Env) -> None:
    assert env.call("create_agent").content == "Error: name is required"
    res = env.call("create_agent", name="Researcher")
    row = env.last()
    assert res.content == 'Creating agent "Researcher". You will be notified when it is ready.'
    assert row["kind"] == "system" and row["platform_id"] is None
    assert row["content"] == {
        "action": "create_agent", "requestId": row["id"], "name": "Researcher",
        "instructions": None,
    }  # fmt: skip


def test_install_packages(env: Env) -> None:
    assert env.call("install_packages").content == (
        "Error: At least one apt, npm or pip package is required"
    )
    assert env.call("install_packages", apt=[f"p{i}" for i in range(21)]).content == (
        "Error: Maximum 20 packages per request"
    )
    assert env.call("install_packages", apt=["curl; rm -rf /"]).content == (
        'Error: Invalid apt package name: "curl; rm -rf /". Only lowercase letters, digits, '
        "and ._+- allowed."
    )
    assert env.call("install_packages", npm=["left-pad@1.0"]).content == (
        'Error: Invalid npm package name: "left-pad@1.0". No version specs or shell characters.'
    )
    # the shared rule (carapace.packagenames): npm stops at 214 characters, apt at 100
    assert env.call("install_packages", npm=["a" * 215]).is_error
    assert env.call("install_packages", apt=["a" * 101]).is_error
    res = env.call("install_packages", apt=["ffmpeg"], npm=["@scope/pkg"], reason="video")
    assert res.content == (
        "Package install request submitted. You will be notified when admin approves or rejects."
    )
    assert env.last()["content"] == {
        "action": "install_packages", "apt": ["ffmpeg"], "npm": ["@scope/pkg"], "reason": "video",
    }  # fmt: skip


def test_add_mcp_server(env: Env) -> None:
    assert env.call("add_mcp_server", name="x").content == (
        "Error: name and a command or url are required"
    )
    env.call("add_mcp_server", name="web", url="https://example.org/mcp")
    assert env.last()["content"] == {
        "action": "add_mcp_server", "name": "web", "url": "https://example.org/mcp"
    }  # fmt: skip
    res = env.call("add_mcp_server", name="fs", command="npx", args=["-y", "srv"])
    assert res.content == (
        "MCP server request submitted. You will be notified when admin approves or rejects."
    )
    assert env.last()["content"] == {
        "action": "add_mcp_server", "name": "fs", "command": "npx", "args": ["-y", "srv"],
        "env": {},
    }  # fmt: skip


def test_tool_calls_touch_the_heartbeat_and_container_state(env: Env) -> None:
    env.paths.heartbeat.unlink(missing_ok=True)
    env.call("list_tasks")
    assert env.paths.heartbeat.exists()
    row = env.runner.outbound.conn.execute("SELECT * FROM container_state").fetchone()
    assert row["current_tool"] is None and row["updated_at"]


def test_seqs_are_odd_and_above_inbound(env: Env) -> None:
    for _ in range(3):
        write_chat(env.paths, "x")
    env.call("send_message", text="a")
    env.call("send_message", text="b")
    seqs = [r["seq"] for r in env.out()]
    assert seqs == [7, 9]


def test_schedule_relative_to_now_is_checked_with_the_clock(env: Env) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not env.call("schedule_task", prompt="p", processAfter=soon).is_error
