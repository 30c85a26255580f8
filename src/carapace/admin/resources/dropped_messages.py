"""``dropped-messages``: the audit of chats whose messages were dropped (``unregistered_senders``)."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import DEFAULT_LIMIT, LIMIT, rows
from carapace.db import dropped
from carapace.errors import NotFoundError


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found = dropped.list_dropped(ctx.db, limit=max(1, args.get("limit") or DEFAULT_LIMIT))
    for key in ("reason", "channel_type"):
        if key in args:
            found = [d for d in found if getattr(d, key) == args[key]]
    return rows(found, args)


def _clear(ctx: AdminContext, args: dict[str, Any]) -> Any:
    if not dropped.clear_dropped(ctx.db, args["channel_type"], args["platform_id"]):
        raise NotFoundError(
            f"no dropped messages from {args['channel_type']}:{args['platform_id']}"
        )
    return {
        "channel_type": args["channel_type"],
        "platform_id": args["platform_id"],
        "cleared": True,
    }


RESOURCE = Resource(
    name="dropped-messages",
    singular="dropped chat",
    help="Chats whose messages were dropped, newest first, with the last reason: "
    + ", ".join(dropped.REASONS)
    + ".",
    verbs=(
        Verb(
            "list",
            _list,
            "List dropped-message records.",
            options=(
                Opt("reason", "Only this reason.", type="enum", choices=dropped.REASONS),
                Opt("channel_type", "Only this channel type."),
                LIMIT,
            ),
            kind="list",
        ),
        Verb(
            "clear",
            _clear,
            "Forget the record of one chat.",
            access="approval",
            options=(
                Opt("channel_type", "Channel type.", required=True),
                Opt("platform_id", "The chat's platform id.", required=True),
            ),
        ),
    ),
)
