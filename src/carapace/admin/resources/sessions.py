"""``sessions``: conversations between a chat (or nothing) and an agent group."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import ID, LIMIT, group_id, require, row, rows
from carapace.db import sessions
from carapace.db.session import SessionPaths


def _owner(ctx: AdminContext, args: dict[str, Any]) -> str | None:
    s = sessions.get_session(ctx.db, args["id"])
    return s.agent_group_id if s else None


def _require(ctx: AdminContext, id: str) -> sessions.Session:
    return require(sessions.get_session(ctx.db, id), "session", id)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["agent_group_id"]) if "agent_group_id" in args else None
    found = sessions.list_sessions(
        ctx.db,
        agent_group_id=ag,
        status=args.get("status"),
        container_status=args.get("container_status"),
    )
    if "messaging_group_id" in args:
        found = [s for s in found if s.messaging_group_id == args["messaging_group_id"]]
    return rows(found, args)


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    s = _require(ctx, args["id"])
    paths = SessionPaths.of(ctx.home.data_dir, s.agent_group_id, s.id)
    return {**row(s), "path": str(paths.root), "folder_exists": paths.inbound.exists()}


def _close(ctx: AdminContext, args: dict[str, Any]) -> Any:
    s = _require(ctx, args["id"])
    stopped = ctx.stop_session(s.id)
    sessions.close_session(ctx.db, s.id)
    return {"closed": s.id, "stopped": stopped}


def _compact(ctx: AdminContext, args: dict[str, Any]) -> Any:
    from carapace.ops.retention import POLICIES, RetentionPolicy, compact_home

    base = RetentionPolicy.from_settings(ctx.settings)
    policy = RetentionPolicy(
        float(args.get("days", base.days)), str(args.get("policy", base.policy))
    )
    if policy.policy not in POLICIES:
        policy = base
    sid = args.get("id")
    if sid is not None:
        _require(ctx, sid)
    done = compact_home(ctx.home, ctx.db, policy, now=ctx.now(), session_id=sid)
    return {"days": policy.days, "policy": policy.policy,
            "sessions": [c.as_dict() for c in done]}  # fmt: skip


RESOURCE = Resource(
    name="sessions",
    singular="session",
    help="Sessions of agent groups: status, runner state, last activity.",
    scope_field="agent_group_id",
    group_scope=True,
    verbs=(
        Verb(
            "list",
            _list,
            "List sessions.",
            options=(
                Opt("agent_group_id", "Only this agent group (id or folder)."),
                Opt("messaging_group_id", "Only sessions of this chat."),
                Opt("status", "Only this status.", type="enum", choices=("active", "closed")),
                Opt(
                    "container_status",
                    "Only this runner state.",
                    type="enum",
                    choices=sessions.CONTAINER_STATUSES,
                ),
                LIMIT,
            ),
            kind="list",
        ),
        Verb("get", _get, "Show one session.", options=(ID,), kind="get", owner=_owner),
        Verb(
            "close",
            _close,
            "Close a session: stop its runner; the next message starts a new session.",
            access="approval",
            options=(ID,),
            owner=_owner,
        ),
        Verb(
            "compact",
            _compact,
            "Archive or prune processed messages, acks, delivered rows and transcripts older "
            "than the retention age (carapace.toml [retention]); never anything not yet "
            "processed or delivered.",
            access="approval",
            group_scope=False,
            options=(
                Opt("id", "Only this session (default: every session)."),
                Opt("days", "Age in days (default: retention.days, 30).", type="int", minimum=1),
                Opt(
                    "policy", "What to do with old rows.", type="enum", choices=("archive", "prune")
                ),
            ),
        ),
    ),
)
