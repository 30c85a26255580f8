"""``send_message``, ``send_file``, ``edit_message``, ``add_reaction`` (spec §8.2-8.6).

Deviations from NanoClaw (docs/compat.md):

* ``in_reply_to`` of ``send_message``/``send_file`` rows is the id of the row the turn
  answers (NanoClaw's MCP process always wrote NULL, W-1).
* Without ``to``, the reply goes to the conversation the turn answers (the batch's origin),
  then ``session_routing``, then the only destination (NanoClaw: ``session_routing`` first).
  A turn answering a host/system note skips the origin (the agent itself).
* ``send_file`` refuses file names with ``/``, ``..`` or a leading dot (W-19), source paths
  outside the workspace, and directories; it returns the message's seq as its id.
* Edits and reactions on inbound messages strip the router's ``:<agent_group_id>`` suffix
  from the message id (W-9).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from carapace.runner.inbound import Routing
from carapace.runner.tools.base import Tool, ToolContext, ToolError, tool

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


MAX_FILENAME = 255


def resolve_target(ctx: ToolContext, to: str | None) -> tuple[Routing, str]:
    """(routing, label) for ``send_message``/``send_file`` (spec §8.2, adapted)."""
    if not to:
        origin = ctx.batch.origin
        if not origin.empty and not ctx.inbound.answers_note(origin, ctx.batch.in_reply_to):
            return origin, "(current conversation)"
        session = ctx.inbound.session_routing()
        if not session.empty:
            return session, "(current conversation)"
        dests = ctx.inbound.destinations()
        if not dests:
            raise ToolError("No destinations configured.")
        if len(dests) > 1:
            names = ", ".join(d.name for d in dests)
            raise ToolError(f'You have multiple destinations — specify "to". Options: {names}')
        to = dests[0].name
    dests = ctx.inbound.destinations()
    dest = next((d for d in dests if d.name == to), None)
    if dest is None:
        known = ", ".join(d.name for d in dests) or "(none)"
        raise ToolError(f'Unknown destination "{to}". Known: {known}')
    if dest.type == "agent":
        return Routing("agent", dest.agent_group_id, None), to
    thread: str | None = None
    for candidate in (ctx.batch.origin, ctx.inbound.session_routing()):
        if (candidate.channel_type, candidate.platform_id) == (dest.channel_type, dest.platform_id):
            thread = candidate.thread_id
            break
    return Routing(dest.channel_type, dest.platform_id, thread), to


def _send_message(ctx: ToolContext, args: dict[str, Any]) -> str:
    text = args.get("text")
    if not text:
        raise ToolError("text is required")
    routing, label = resolve_target(ctx, args.get("to"))
    seq = ctx.outbound.write(
        id=ctx.batch.stable_id(),
        kind="chat",
        content=_with_answers(ctx, routing, {"text": text}),
        in_reply_to=ctx.batch.in_reply_to,
        **_cols(routing),
        now=ctx.now(),
        once=True,
    )
    return f"Message sent to {label} (id: {seq})"


def _with_answers(ctx: ToolContext, routing: Routing, content: dict[str, Any]) -> dict[str, Any]:
    """A message to the batch's own conversation answers every sender in the batch."""
    answers = ctx.batch.answers()
    if answers and routing.same_chat(ctx.batch.origin):
        return {**content, "answers": answers}
    return content


def safe_filename(name: str) -> bool:
    return (
        bool(name)
        and len(name) <= MAX_FILENAME
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
    )


def _send_file(ctx: ToolContext, args: dict[str, Any]) -> str:
    path = args.get("path")
    if not path:
        raise ToolError("path is required")
    routing, label = resolve_target(ctx, args.get("to"))
    try:
        source = ctx.resolve_path(path)
    except ToolError:
        raise
    if not source.exists():
        raise ToolError(f"File not found: {path}")
    if not source.is_file():
        raise ToolError(f"Not a regular file: {path}")
    filename = args.get("filename") or source.name
    if not safe_filename(filename):
        raise ToolError(
            f'Invalid filename "{filename}": use a plain file name (no "/", no "..", '
            "not starting with a dot)."
        )
    msg_id = ctx.batch.stable_id()
    if (seq := ctx.outbound.seq_of(msg_id)) is not None:  # sent by an earlier try of the turn
        return f"File sent to {label} (id: {seq}, filename: {filename})"
    outbox = ctx.config.paths.outbox
    outbox.mkdir(parents=True, exist_ok=True)
    session_real = os.path.realpath(ctx.config.session_dir)
    if outbox.is_symlink() or os.path.realpath(outbox) != os.path.join(session_real, "outbox"):
        raise ToolError("The outbox folder is not a plain folder of the session; refusing.")
    target_dir = outbox / msg_id
    target_dir.mkdir(exist_ok=True)  # left by a try whose runner died before its row
    target = target_dir / filename
    if target_dir.is_symlink() or not target_dir.is_dir():
        raise ToolError("The outbox folder is not a plain folder of the session; refusing.")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)  # a partial copy of a try whose runner died (unlink: no link followed)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, Path(source).open("rb") as src:
        import shutil  # not at the runner's start

        shutil.copyfileobj(src, out)
    seq = ctx.outbound.write(
        id=msg_id,
        kind="chat",
        content=_with_answers(ctx, routing, {"text": args.get("text") or "", "files": [filename]}),
        in_reply_to=ctx.batch.in_reply_to,
        **_cols(routing),
        now=ctx.now(),
        once=True,
    )
    return f"File sent to {label} (id: {seq}, filename: {filename})"


def _platform_id(ctx: ToolContext, seq: int) -> tuple[str, Routing] | None:
    """The platform message id and routing of the message with this seq (spec §4.5)."""
    row = ctx.inbound.by_seq(seq)
    if row is not None:
        pid = row.id
        suffix = f":{ctx.agent_group_id}"
        if pid.endswith(suffix) and len(pid) > len(suffix):
            pid = pid[: -len(suffix)]
        return pid, row.routing
    out = ctx.outbound.by_seq(seq)
    if out is not None:
        pid = ctx.inbound.delivered_platform_id(out["id"]) or out["id"]
        return pid, Routing(out["channel_type"], out["platform_id"], out["thread_id"])
    return None


def _operation(ctx: ToolContext, seq_arg: object, content: dict[str, Any], required: str) -> int:
    seq = seq_arg if isinstance(seq_arg, int) else 0
    if not seq or not all(content.values()):
        raise ToolError(required)
    found = _platform_id(ctx, seq)
    if found is None:
        raise ToolError(f"Message #{seq} not found")
    pid, routing = found
    if routing.empty:
        raise ToolError(f"Cannot determine destination for message #{seq}")
    op = content.pop("operation")
    ctx.outbound.write(
        id=ctx.batch.stable_id(),
        kind="chat",
        content={"operation": op, "messageId": pid, **content},
        **_cols(routing),
        now=ctx.now(),
        once=True,
    )
    return seq


def _edit_message(ctx: ToolContext, args: dict[str, Any]) -> str:
    content = {"operation": "edit", "text": args.get("text") or ""}
    seq = _operation(ctx, args.get("messageId"), content, "messageId and text are required")
    return f"Message edit queued for #{seq}"


def _add_reaction(ctx: ToolContext, args: dict[str, Any]) -> str:
    content = {"operation": "reaction", "emoji": args.get("emoji") or ""}
    seq = _operation(ctx, args.get("messageId"), content, "messageId and emoji are required")
    return f"Reaction queued for #{seq}"


def _cols(routing: Routing) -> dict[str, str | None]:
    return {
        "channel_type": routing.channel_type,
        "platform_id": routing.platform_id,
        "thread_id": routing.thread_id,
    }


_TO = {
    "type": "string",
    "description": "Destination name; omit to answer the conversation you are in.",
}
_MESSAGE_ID = {"type": "integer", "description": "The message id (seq)."}

TOOLS = [
    Tool(
        tool(
            "send_message",
            "Send a message now, in the middle of a turn (e.g. a quick acknowledgement). "
            "Without `to` it goes to the conversation you are answering.",
            {"to": _TO, "text": {"type": "string", "description": "The message text."}},
            ["text"],
        ),
        _send_message,
    ),
    Tool(
        tool(
            "send_file",
            "Send a file from your workspace (path relative to your group folder).",
            {
                "path": {"type": "string", "description": "The file to send."},
                "to": _TO,
                "text": {"type": "string", "description": "Optional caption."},
                "filename": {"type": "string", "description": "Name to send it under."},
            },
            ["path"],
        ),
        _send_file,
    ),
    Tool(
        tool(
            "edit_message",
            "Edit a message you sent earlier, by its id (the seq number shown as id).",
            {
                "messageId": _MESSAGE_ID,
                "text": {"type": "string", "description": "The new text."},
            },
            ["messageId", "text"],
        ),
        _edit_message,
    ),
    Tool(
        tool(
            "add_reaction",
            "React to a message with an emoji, by its id (the seq number shown as id).",
            {
                "messageId": _MESSAGE_ID,
                "emoji": {"type": "string", "description": "Emoji shortcode, e.g. thumbs_up."},
            },
            ["messageId", "emoji"],
        ),
        _add_reaction,
    ),
]
