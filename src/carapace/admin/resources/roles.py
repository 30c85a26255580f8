"""``roles``: owner and admin grants (``user_roles``); the owner role is always global."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import LIMIT, group_id, rows
from carapace.db import users
from carapace.errors import NotFoundError

USER = Opt("user", "The user id.", required=True)
ROLE = Opt("role", "The role.", type="enum", choices=users.ROLES, required=True)
GROUP = Opt("group", "Scope the role to this agent group (id or folder); default global.")


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"]) if "group" in args else None
    found = users.list_roles(ctx.db, user_id=args.get("user"), agent_group_id=ag)
    if "role" in args:
        found = [r for r in found if r.role == args["role"]]
    return rows(found, args)


def _grant(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"]) if "group" in args else None
    granted = users.grant_role(
        ctx.db, args["user"], args["role"], ag, granted_by=args.get("granted_by"), now=ctx.now()
    )
    return {"user_id": args["user"], "role": args["role"], "agent_group_id": ag, "granted": granted}


def _revoke(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["group"]) if "group" in args else None
    if not users.revoke_role(ctx.db, args["user"], args["role"], ag):
        where = f"for agent group {ag}" if ag else "globally"
        raise NotFoundError(f"{args['user']} does not hold {args['role']} {where}")
    return {"user_id": args["user"], "role": args["role"], "agent_group_id": ag, "revoked": True}


RESOURCE = Resource(
    name="roles",
    singular="role",
    help="Owner and admin roles (global, or admin scoped to one agent group).",
    verbs=(
        Verb(
            "list",
            _list,
            "List role grants.",
            options=(
                Opt("user", "Only this user."),
                Opt("role", "Only this role.", type="enum", choices=users.ROLES),
                Opt("group", "Only roles scoped to this agent group."),
                LIMIT,
            ),
            kind="list",
        ),
        Verb(
            "grant",
            _grant,
            "Grant a role (a scoped admin also becomes a member of the group).",
            access="approval",
            options=(USER, ROLE, GROUP, Opt("granted_by", "Who granted it (a user id).")),
        ),
        Verb(
            "revoke",
            _revoke,
            "Revoke a role.",
            access="approval",
            options=(USER, ROLE, GROUP),
        ),
    ),
)
