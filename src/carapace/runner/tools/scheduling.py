"""Scheduling tools (spec §8.9): every change is a ``kind='system'`` row the host applies.

Deviations from NanoClaw (docs/compat.md), fixing W-13:

* cron expressions and time zones are validated when the tool is called; a ``processAfter``
  more than ``PAST_TOLERANCE_S`` in the past is refused;
* ``schedule_task`` takes an optional IANA ``timezone`` (default: the runner's) and sends it
  as an extra ``timezone`` field, which the host uses for the recurrence (NanoClaw ignores
  unknown fields);
* ``update_task``/``cancel_task``/``pause_task``/``resume_task`` refuse ids that match no
  task (neither in ``inbound.db`` nor in a ``schedule_task`` not yet applied);
* ``list_tasks`` also shows tasks the host has not applied yet, and times in the
  configured time zone.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from carapace.errors import ValidationError
from carapace.jsonutil import loads_or
from carapace.runner.formatter import format_time, parse_timestamp, parse_zoned_to_utc
from carapace.runner.tools.base import Tool, ToolContext, ToolError, tool
from carapace.timefmt import iso, new_id

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


PAST_TOLERANCE_S = 300
PROMPT_PREVIEW = 80
CATCH_UP = ("skip", "latest", "all")


def _cron() -> Any:
    from carapace.sched import cron

    return cron


def _zone(ctx: ToolContext, name: str | None) -> str:
    if not name:
        return ctx.config.timezone
    try:
        _cron().validate_timezone(name)
    except ValidationError as exc:
        raise ToolError(f"invalid timezone: {exc}") from None
    return name


def _when(ctx: ToolContext, value: str, tz: str) -> datetime:
    try:
        when = parse_zoned_to_utc(value, tz)
    except (ValueError, OverflowError):
        raise ToolError(f"invalid processAfter: {value}") from None
    now = ctx.now()
    if when < now - timedelta(seconds=PAST_TOLERANCE_S):
        raise ToolError(
            f"processAfter is in the past: {value} ({iso(when)}); it is now "
            f"{format_time(now, tz)} in {tz}"
        )
    return when


def _check_cron(expr: str) -> None:
    try:
        _cron().validate_cron(expr)
    except ValidationError as exc:
        raise ToolError(f"invalid recurrence: {exc}") from None


def _catch_up(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if value not in CATCH_UP:
        raise ToolError(f"invalid catch_up: {value!r} (use skip, latest or all)")
    return str(value)


SCRIPT_OFF = (
    "script refused: bash is off for this agent group, and a pre-task script is a bash "
    "command (it obeys the same setting). Schedule the task without a script."
)


def _check_script(ctx: ToolContext, script: object) -> None:
    """A pre-task script is bash: refused when bash is off for the group."""
    if not isinstance(script, str) or not script.strip():
        return
    ws = ctx.workspace
    mode, _why = ctx.config.agent_settings.bash_mode(ctx.config.sandboxed)
    if ws is None or mode == "off" or getattr(ws.policy, "bash", "off") == "off":
        raise ToolError(SCRIPT_OFF)


def _schedule_task(ctx: ToolContext, args: dict[str, Any]) -> str:
    prompt, after = args.get("prompt"), args.get("processAfter")
    if not prompt or not after:
        raise ToolError("prompt and processAfter are required")
    tz = _zone(ctx, args.get("timezone"))
    when = _when(ctx, after, tz)
    recurrence = args.get("recurrence") or None
    if recurrence:
        _check_cron(recurrence)
    _check_script(ctx, args.get("script"))
    routing = ctx.conversation_routing()
    task_id = new_id("task")
    content = {
        "action": "schedule_task",
        "taskId": task_id,
        "prompt": prompt,
        "script": args.get("script") or None,
        "processAfter": iso(when),
        "recurrence": recurrence,
        "platformId": routing.platform_id,
        "channelType": routing.channel_type,
        "threadId": routing.thread_id,
        "timezone": tz,
    }
    catch_up = _catch_up(args.get("catch_up"))
    if catch_up:
        content["catchUp"] = catch_up
    ctx.outbound.write(
        id=task_id,
        kind="system",
        content=content,
        platform_id=routing.platform_id,
        channel_type=routing.channel_type,
        thread_id=routing.thread_id,
        now=ctx.now(),
    )
    recur = f", recurrence: {recurrence}" if recurrence else ""
    return f"Task scheduled (id: {task_id}, runs at: {iso(when)}{recur})"


def _unapplied(ctx: ToolContext) -> list[dict[str, Any]]:
    """``schedule_task`` rows this runner wrote that the host has not delivered yet."""
    return [
        a
        for a in ctx.outbound.undelivered_actions("schedule_task")
        if not ctx.inbound.is_delivered(a["_row_id"])
        and not ctx.inbound.task_exists(str(a.get("taskId")))
    ]


def _show_time(value: str | None, tz: str) -> str:
    if not value:
        return "now"
    try:
        return f"{format_time(parse_timestamp(value), tz)} ({value} UTC)"
    except ValueError:
        return value


def _list_tasks(ctx: ToolContext, args: dict[str, Any]) -> str:
    status = args.get("status") or None
    lines: list[str] = []
    for row in ctx.inbound.tasks(status):
        data = loads_or(row["content"], {})
        data = data if isinstance(data, dict) else {}
        prompt = str(data.get("prompt") or "")
        tz = str(data.get("timezone") or ctx.config.timezone)  # the task's own zone
        recur = f"recur={row['recurrence']} " if row["recurrence"] else ""
        lines.append(
            f"- {row['id']} [{row['status']}] at={_show_time(row['process_after'], tz)} "
            f"{recur}→ {prompt[:PROMPT_PREVIEW]}"
        )
    if status in (None, "pending"):
        for a in _unapplied(ctx):
            recur = f"recur={a['recurrence']} " if a.get("recurrence") else ""
            tz = str(a.get("timezone") or ctx.config.timezone)
            lines.append(
                f"- {a.get('taskId')} [scheduling] at={_show_time(a.get('processAfter'), tz)} "
                f"{recur}→ {str(a.get('prompt') or '')[:PROMPT_PREVIEW]}"
            )
    return "\n".join(lines) if lines else "No tasks found."


def _require_task(ctx: ToolContext, task_id: str) -> None:
    if ctx.inbound.task_exists(task_id):
        return
    if any(a.get("taskId") == task_id for a in _unapplied(ctx)):
        return
    raise ToolError(f'No task with id "{task_id}". Use list_tasks to see the task ids.')


def _simple(action: str, verb: str) -> Any:
    def handler(ctx: ToolContext, args: dict[str, Any]) -> str:
        task_id = args.get("taskId")
        if not task_id:
            raise ToolError("taskId is required")
        _require_task(ctx, task_id)
        ctx.outbound.write(
            id=new_id("sys"),
            kind="system",
            content={"action": action, "taskId": task_id},
            now=ctx.now(),
        )
        return f"Task {verb} requested: {task_id}"

    return handler


def _update_task(ctx: ToolContext, args: dict[str, Any]) -> str:
    task_id = args.get("taskId")
    if not task_id:
        raise ToolError("taskId is required")
    fields: dict[str, Any] = {}
    if isinstance(args.get("prompt"), str):
        fields["prompt"] = args["prompt"]
    if isinstance(args.get("processAfter"), str):
        tz = _zone(ctx, args.get("timezone"))
        fields["processAfter"] = iso(_when(ctx, args["processAfter"], tz))
    if isinstance(args.get("recurrence"), str):
        recurrence = args["recurrence"] or None
        if recurrence:
            _check_cron(recurrence)
        fields["recurrence"] = recurrence
    if isinstance(args.get("script"), str):
        _check_script(ctx, args["script"])
        fields["script"] = args["script"] or None
    if args.get("catch_up"):
        fields["catchUp"] = _catch_up(args["catch_up"])
    if isinstance(args.get("timezone"), str) and args["timezone"]:
        fields["timezone"] = _zone(ctx, args["timezone"])
    if not fields:
        raise ToolError("at least one field to update is required")
    _require_task(ctx, task_id)
    ctx.outbound.write(
        id=new_id("sys"),
        kind="system",
        content={"action": "update_task", "taskId": task_id, **fields},
        now=ctx.now(),
    )
    return f"Task update requested: {task_id}"


_TASK_ID = {"taskId": {"type": "string", "description": "The task id (from list_tasks)."}}
_WHEN = (
    "When to run: ISO 8601. A time without Z or an offset is local time in `timezone` "
    "(default: the configured time zone)."
)
_TZ = {"type": "string", "description": "IANA time zone, e.g. Europe/Oslo."}
_CATCH_UP = {
    "type": "string",
    "enum": list(CATCH_UP),
    "description": "Occurrences missed while the host was down: skip (default), latest "
    "(run the most recent once) or all (run each, at most 10).",
}

TOOLS = [
    Tool(
        tool(
            "schedule_task",
            "Schedule a task: at processAfter (and then on the cron `recurrence`, if given) "
            "you receive the prompt as a <task>. A `script` (bash) may run first and decide "
            'whether to wake you by printing {"wakeAgent": bool, "data": ...}.',
            {
                "prompt": {"type": "string", "description": "What to do when it runs."},
                "processAfter": {"type": "string", "description": _WHEN},
                "recurrence": {"type": "string", "description": "Cron expression (5 fields)."},
                "script": {"type": "string", "description": "Optional pre-task bash script."},
                "timezone": _TZ,
                "catch_up": _CATCH_UP,
            },
            ["prompt", "processAfter"],
        ),
        _schedule_task,
    ),
    Tool(
        tool(
            "list_tasks",
            "List scheduled tasks (pending and paused unless `status` is given).",
            {"status": {"type": "string", "description": "Only tasks with this status."}},
            [],
        ),
        _list_tasks,
    ),
    Tool(
        tool(
            "update_task",
            "Change a scheduled task (every occurrence of its series). Empty recurrence or "
            "script removes it.",
            {
                **_TASK_ID,
                "prompt": {"type": "string"},
                "processAfter": {"type": "string", "description": _WHEN},
                "recurrence": {"type": "string"},
                "script": {"type": "string"},
                "timezone": _TZ,
                "catch_up": _CATCH_UP,
            },
            ["taskId"],
        ),
        _update_task,
    ),
    Tool(
        tool("cancel_task", "Cancel a scheduled task.", dict(_TASK_ID), ["taskId"]),
        _simple("cancel_task", "cancellation"),
    ),
    Tool(
        tool("pause_task", "Pause a scheduled task.", dict(_TASK_ID), ["taskId"]),
        _simple("pause_task", "pause"),
    ),
    Tool(
        tool("resume_task", "Resume a paused task.", dict(_TASK_ID), ["taskId"]),
        _simple("resume_task", "resume"),
    ),
]
