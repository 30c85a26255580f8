"""``members``: who may talk to an agent group (``agent_group_members``)."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import LIMIT, group_id, rows
from carapace.db import users
from carapace.errors import NotFoundError

USER = Opt("user", "The user id.", required=True)
GROUP = Opt("group", "The agent group (id or folder).", required=True)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"]) if "group" in args else None
    found = users.list_members(ctx.db, ag)
    if "user" in args:
        found = [m for m in found if m.user_id == args["user"]]
    return rows(found, args)


def _add(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"])
    added = users.add_member(ctx.db, args["user"], ag, added_by=args.get("added_by"), now=ctx.now())
    return {"user_id": args["user"], "agent_group_id": ag, "added": added}


def _remove(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"])
    if not users.remove_member(ctx.db, args["user"], ag):
        raise NotFoundError(f"{args['user']} is not a member of {ag}")
    return {"user_id": args["user"], "agent_group_id": ag, "removed": True}


RESOURCE = Resource(
    name="members",
    singular="member",
    help="Members of agent groups (known senders).",
    scope_field="agent_group_id",
    group_scope=True,
    verbs=(
        Verb(
            "list",
            _list,
            "List memberships.",
            options=(
                Opt("group", "Only this agent group (id or folder)."),
                Opt("user", "Only this user."),
                LIMIT,
            ),
            kind="list",
        ),
        Verb(
            "add",
            _add,
            "Make a user a member of an agent group.",
            access="approval",
            options=(USER, GROUP, Opt("added_by", "Who added them (a user id).")),
        ),
        Verb(
            "remove",
            _remove,
            "Remove a membership (refused while the user is an admin of the group).",
            access="approval",
            options=(USER, GROUP),
        ),
    ),
)
