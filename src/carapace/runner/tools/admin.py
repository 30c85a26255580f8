"""``admin``: the agent's admin commands — NanoClaw's in-container ``ncl`` as a tool
(spec/runner.md §12, host §8.1 "Agent caller").

The tool writes an outbound ``system`` row ``{action: 'cli_request', requestId, command,
args}`` (odd seq); the host dispatches it with the caller ``{caller: 'agent', …}`` under
the group's ``cli_scope`` and answers with an inbound ``system`` row ``cli-resp-<requestId>``
``{type: 'cli_response', requestId, frame}`` (trigger 0). The tool waits for it (30 s),
acks it ``completed`` and returns the frame as JSON.

Deviations from NanoClaw (docs/compat.md):

* A tool instead of a binary run through Bash; not offered when ``cli_scope`` is
  ``disabled`` (NanoClaw only dropped the instructions, the binary stayed).
* The answer is looked up by its id and parsed (not a ``LIKE`` on the content), the wait
  wakes on the inbound commit instead of polling every 500 ms, and the heartbeat stays
  fresh while waiting. Late answers are acked by the poll loop (``batching``).
* ``approval-pending`` is not an error: the agent is told the result comes as a message.
"""

from __future__ import annotations

import time

from carapace.jsonutil import dumps
from carapace.runner.config import RunnerConfig
from carapace.runner.inbound import InRow
from carapace.runner.tools.base import Tool, ToolContext, ToolError, TurnAbandoned, tool
from carapace.timefmt import new_id

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


DEFAULT_TIMEOUT_S = 30.0
WAIT_SLICE_S = 0.5
_PREFIXES = (("carapace", "admin"), ("ncl",))


def command_name(command: str) -> str:
    """``groups config get`` → ``groups-config-get`` (an ``ncl``/``carapace admin`` prefix is
    dropped); the host splits a trailing positional id off on its own."""
    words = command.split()
    for prefix in _PREFIXES:
        if tuple(words[: len(prefix)]) == prefix:
            words = words[len(prefix) :]
            break
    return "-".join(words)


def request_args(args: object) -> dict[str, Any]:
    """Option names as given (kebab or snake case, a leading ``--`` dropped); nulls dropped.
    The host normalises and checks them."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ToolError('args must be an object of options, e.g. {"id": "ag-…"}')
    return {str(k).lstrip("-"): v for k, v in args.items() if v is not None}


def cli_response(ctx: ToolContext, request_id: str) -> InRow | None:
    """The pending ``cli_response`` row for ``request_id`` (by id, content checked)."""
    row = ctx.inbound.by_id(f"cli-resp-{request_id}")
    if row is None or row.status not in (None, "pending"):
        return None
    data = row.data
    if data.get("type") != "cli_response" or data.get("requestId") != request_id:
        return None
    return row


def run_admin(
    ctx: ToolContext, args: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> str:
    """Send one admin command to the host and wait for its response frame."""
    raw = args.get("command")
    command = command_name(raw) if isinstance(raw, str) else ""
    if not command:
        raise ToolError('command is required, e.g. "groups get" or "help"')
    options = request_args(args.get("args"))
    request_id = new_id("cli")
    ctx.outbound.write(
        id=request_id,
        kind="system",
        content={
            "action": "cli_request",
            "requestId": request_id,
            "command": command,
            "args": options,
        },
        now=ctx.now(),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        ctx.heartbeat()
        row = cli_response(ctx, request_id)
        if row is not None and not ctx.outbound.acked([row.id]):
            ctx.outbound.complete([row.id], now=ctx.now())
            return render(command, row.data.get("frame"))
        if ctx.should_stop():
            raise TurnAbandoned("shutdown while waiting for an admin command")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            shown = int(timeout_s) if float(timeout_s).is_integer() else timeout_s
            raise ToolError(f"admin command {command!r} timed out after {shown}s")
        ctx.wait(min(WAIT_SLICE_S, remaining))


def render(command: str, frame: object) -> str:
    """The tool's text for a response frame; ``ok: false`` raises ``ToolError``."""
    if not isinstance(frame, dict):
        raise ToolError(f"error (transport-error): malformed response to {command!r}")
    if frame.get("ok") is True:
        return dumps(frame)
    error = frame.get("error")
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or "unknown")
    message = str(error.get("message") or "")
    if code == "approval-pending":
        return (
            f"Approval requested ({message}). An admin must approve `{command}` before it "
            "runs; the result will arrive later as a message in this conversation. Do not "
            "send the command again."
        )
    raise ToolError(f"error ({code}): {message}")


def _enabled(config: RunnerConfig) -> bool:
    return config.cli_scope != "disabled"


DESCRIPTION = (
    "Run an admin command of this installation (like `carapace admin <command>`) and get "
    'the response frame {id, ok, data} as JSON. command: words such as "groups get", '
    '"destinations list", "members add", "groups config get"; "help" lists what you may '
    'run, "<resource> help" its verbs and options. args: the options, e.g. '
    '{"id": "ag-…"} or {"user": "telegram:123"} (kebab or snake case). '
    "Scope (the group's cli_scope): in 'group' scope only the resources groups, sessions, "
    "destinations, members and tasks are reachable, and only for your own agent group "
    "(it is filled in for you; naming another group is forbidden); in 'global' scope "
    "also messaging-groups, wirings, users, roles, user-dms, dropped-messages and "
    "approvals. Reading (list, get) runs at once; changes (create, update, delete, add, "
    "remove, …) need an admin's approval: you get 'approval pending' and the result "
    "arrives later as a message."
)

TOOLS = [
    Tool(
        tool(
            "admin",
            DESCRIPTION,
            {
                "command": {
                    "type": "string",
                    "description": 'The command words, e.g. "groups get", "members add".',
                },
                "args": {
                    "type": "object",
                    "description": 'Options as in `carapace admin`, e.g. {"id": "ag-…"}.',
                },
            },
            ["command"],
        ),
        run_admin,
        _enabled,
    ),
]
