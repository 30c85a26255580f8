"""``tasks``: scheduled and recurring tasks of agent groups (a series per task).

``create`` puts the first occurrence into the session of the group's origin chat (see
``carapace.host.tasks``); the other verbs act on the whole series, by series id or by
the id of any of its occurrences. Times are shown in the task's own zone.
"""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import ID, LIMIT, group_id
from carapace.errors import NotFoundError, ValidationError
from carapace.host import tasks
from carapace.sched import series
from carapace.timefmt import iso

GROUP = Opt("group", "The agent group (id or folder).", required=True)
PROMPT = Opt("prompt", "What the agent is asked to do.")
AT = Opt(
    "at",
    "First run: ISO 8601 time; without a zone it is read in --tz (default: now, "
    "or the next cron time).",
)
CRON = Opt("cron", "Repeat on this cron expression (or '@every <N>s'), read in --tz.")
TZ = Opt("tz", "IANA time zone of the task (default: the host's).")
CATCH_UP = Opt(
    "catch_up",
    "Occurrences missed while the host was down: skip (default), latest, all (max 10).",
    type="enum",
    choices=series.CATCH_UP_POLICIES,
)
SCRIPT = Opt(
    "script",
    "A bash file run before each occurrence; it decides whether to wake "
    "the agent (the CLI reads the file).",
)


def _owner(ctx: AdminContext, args: dict[str, Any]) -> str | None:
    try:
        return tasks.find_task(ctx.db, ctx.home, args["id"]).session.agent_group_id
    except NotFoundError:
        return None


def _tz(ctx: AdminContext) -> str:
    return ctx.settings.timezone or "UTC"


def _wake_if_soon(ctx: AdminContext, session_id: str, when: Any) -> None:
    if tasks.soon(when, ctx.now()):
        ctx.wake_session(session_id)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"]) if "group" in args else None
    found = tasks.list_tasks(
        ctx.db, ctx.home, _tz(ctx), agent_group_id=ag, status=args.get("status")
    )
    return found[: args.get("limit") or 200]


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return tasks.get_task(ctx.db, ctx.home, args["id"], _tz(ctx))


def _create(ctx: AdminContext, args: dict[str, Any]) -> Any:
    if not args.get("prompt"):
        raise ValidationError("missing required option --prompt")
    ag = group_id(ctx, args["group"])
    session, task_id, when = tasks.create_task(
        ctx.db,
        ctx.home,
        ag,
        prompt=args["prompt"],
        at=args.get("at"),
        recurrence=args.get("cron"),
        tz=args.get("tz") or _tz(ctx),
        catch_up=args.get("catch_up"),
        script=args.get("script"),
        now=ctx.now(),
    )
    _wake_if_soon(ctx, session.id, when)
    return tasks.get_task(ctx.db, ctx.home, task_id, _tz(ctx))


def _update(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found = tasks.find_task(ctx.db, ctx.home, args["id"])
    current = tasks.get_task(ctx.db, ctx.home, found.series_id, _tz(ctx))
    fields: dict[str, Any] = {}
    if "prompt" in args:
        fields["prompt"] = args["prompt"]
    if "script" in args:
        fields["script"] = args["script"] or None
    if "tz" in args:
        fields["timezone"] = args["tz"]
    if "catch_up" in args:
        fields["catchUp"] = args["catch_up"]
    if "cron" in args:
        fields["recurrence"] = None if args["cron"] in ("", "none") else args["cron"]
    if "at" in args:
        fields["processAfter"] = iso(
            tasks.parse_at(args["at"], args.get("tz") or current["timezone"])
        )
    if not fields:
        raise ValidationError(
            "nothing to update: give --prompt, --at, --cron, --tz, --catch-up or --script"
        )
    fields = series.update_fields_from_action(fields)
    with tasks.session_inbound(ctx.home, found.session) as inb:
        n = series.update_series(inb, found.series_id, fields, now=ctx.now())
    if not n:
        raise ValidationError(f"task {args['id']!r} has no live occurrence (ended or cancelled)")
    _refresh(ctx, found.session.id)
    return tasks.get_task(ctx.db, ctx.home, found.series_id, _tz(ctx))


def _refresh(ctx: AdminContext, session_id: str) -> None:
    from carapace.host.work_index import WorkMarks

    WorkMarks(ctx.db).mark(session_id, iso(ctx.now()))
    if ctx.live:
        ctx.wake_session(session_id)


def _simple(op: str) -> Any:
    def handler(ctx: AdminContext, args: dict[str, Any]) -> Any:
        found = tasks.find_task(ctx.db, ctx.home, args["id"])
        now = ctx.now()
        with tasks.session_inbound(ctx.home, found.session) as inb:
            if op == "pause":
                n = series.pause_series(inb, found.series_id, now=now)
            elif op == "resume":
                n = series.resume_series(inb, found.series_id, now=now, default_tz=_tz(ctx))
            else:
                n = series.cancel_series(inb, found.series_id, now=now)
        if not n:
            state = {"pause": "pending", "resume": "paused", "cancel": "live"}[op]
            raise ValidationError(f"task {args['id']!r} has no {state} occurrence")
        if op == "resume":
            _refresh(ctx, found.session.id)
        return tasks.get_task(ctx.db, ctx.home, found.series_id, _tz(ctx))

    return handler


_EDIT = (ID, PROMPT, AT, CRON, TZ, CATCH_UP, SCRIPT)

RESOURCE = Resource(
    name="tasks",
    singular="task",
    help="Scheduled and recurring tasks: next run in the task's zone, catch-up policy, history.",
    scope_field="agent_group_id",
    group_scope=True,
    verbs=(
        Verb(
            "list",
            _list,
            "List tasks (pending and paused unless --status is given).",
            options=(
                Opt("group", "Only this agent group (id or folder)."),
                Opt(
                    "status",
                    "Only tasks with this status.",
                    type="enum",
                    choices=("pending", "paused", "completed", "failed"),
                ),
                LIMIT,
            ),
            kind="list",
        ),
        Verb(
            "get",
            _get,
            "Show a task with its history (ran, missed, failed, skipped).",
            options=(ID,),
            kind="get",
            owner=_owner,
        ),
        Verb(
            "create",
            _create,
            "Create a task in the group's origin chat session.",
            access="approval",
            options=(
                GROUP,
                Opt("prompt", PROMPT.help, required=True),
                AT,
                CRON,
                TZ,
                CATCH_UP,
                SCRIPT,
            ),
        ),
        Verb(
            "update",
            _update,
            "Change a task (the whole series).",
            access="approval",
            options=_EDIT,
            owner=_owner,
        ),
        Verb(
            "pause",
            _simple("pause"),
            "Pause a task (the whole series).",
            access="approval",
            options=(ID,),
            owner=_owner,
        ),
        Verb(
            "resume",
            _simple("resume"),
            "Resume a paused task.",
            access="approval",
            options=(ID,),
            owner=_owner,
        ),
        Verb(
            "cancel",
            _simple("cancel"),
            "Cancel a task (the whole series).",
            access="approval",
            options=(ID,),
            owner=_owner,
        ),
    ),
)
