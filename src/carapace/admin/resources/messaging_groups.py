"""``messaging-groups``: chats on a channel (``messaging_groups``)."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import (
    FORCE,
    ID,
    LIMIT,
    need_change,
    notify_targets_of_channel,
    require,
    row,
    rows,
)
from carapace.db import messaging

POLICY = Opt(
    "unknown_sender_policy",
    "What to do with messages from unknown senders.",
    type="enum",
    choices=messaging.UNKNOWN_SENDER_POLICIES,
)
IS_GROUP = Opt("is_group", "A group chat (true) or a direct message (false).", type="bool")


def _require(ctx: AdminContext, id: str) -> messaging.MessagingGroup:
    return require(messaging.get_messaging_group(ctx.db, id), "messaging group", id)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found = messaging.list_messaging_groups(ctx.db)
    for key in ("channel_type", "platform_id"):
        if key in args:
            found = [m for m in found if getattr(m, key) == args[key]]
    return rows(found, args)


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return row(_require(ctx, args["id"]))


def _create(ctx: AdminContext, args: dict[str, Any]) -> Any:
    mg = messaging.create_messaging_group(
        ctx.db,
        args["channel_type"],
        args["platform_id"],
        name=args.get("name"),
        is_group=bool(args.get("is_group", False)),
        unknown_sender_policy=args.get("unknown_sender_policy", "strict"),
        id=args.get("id"),
        now=ctx.now(),
    )
    return row(mg)


def _update(ctx: AdminContext, args: dict[str, Any]) -> Any:
    mg = _require(ctx, args["id"])
    changes = need_change(args, ("name", "is_group", "unknown_sender_policy", "denied_at"))
    out = messaging.update_messaging_group(ctx.db, mg.id, **changes)
    if "name" in changes:
        notify_targets_of_channel(ctx, mg.id)  # projected display names follow the chat name
    return row(out)


def _delete(ctx: AdminContext, args: dict[str, Any]) -> Any:
    mg = _require(ctx, args["id"])
    sessions = [
        r[0]
        for r in ctx.db.execute(
            "SELECT id FROM sessions WHERE messaging_group_id=? "
            "AND COALESCE(status, 'active')='active'",
            (mg.id,),
        ).fetchall()
    ]
    messaging.delete_messaging_group(ctx.db, mg.id, force=bool(args.get("force")))
    for sid in sessions:
        ctx.stop_session(sid)
    return {"deleted": mg.id, "closed_sessions": sessions}


RESOURCE = Resource(
    name="messaging-groups",
    singular="messaging group",
    help="Chats on a channel (a DM, a group, a terminal) and their unknown-sender policy.",
    verbs=(
        Verb(
            "list",
            _list,
            "List messaging groups.",
            options=(
                Opt("channel_type", "Only this channel type."),
                Opt("platform_id", "Only this platform id."),
                LIMIT,
            ),
            kind="list",
        ),
        Verb("get", _get, "Show one messaging group.", options=(ID,), kind="get"),
        Verb(
            "create",
            _create,
            "Register a chat.",
            access="approval",
            options=(
                Opt("channel_type", "Channel type (telegram, cli, webhook, …).", required=True),
                Opt("platform_id", "The chat's id on the platform.", required=True),
                Opt("name", "Display name (also names the destination of wirings)."),
                IS_GROUP,
                POLICY,
                Opt("id", "Id to use (default: a generated mg-<ms>-<rand6>)."),
            ),
        ),
        Verb(
            "update",
            _update,
            "Change a messaging group.",
            access="approval",
            options=(
                ID,
                Opt("name", "Display name."),
                IS_GROUP,
                POLICY,
                Opt("denied_at", "When the owner refused the chat (ISO time)."),
            ),
        ),
        Verb(
            "delete",
            _delete,
            "Delete a messaging group; refuses while wirings, sessions, DMs or destinations "
            "use it unless --force (its sessions are then closed).",
            access="approval",
            options=(ID, FORCE),
        ),
    ),
)
