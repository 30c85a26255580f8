"""``users``: people, namespaced per channel (``telegram:123``, ``cli:local``)."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import FORCE, LIMIT, require, row, rows
from carapace.db import users
from carapace.errors import ConflictError

USER_ID = Opt("id", "The namespaced user id, e.g. telegram:123.", required=True)


def _require(ctx: AdminContext, id: str) -> users.User:
    return require(users.get_user(ctx.db, id), "user", id)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found = users.list_users(ctx.db)
    if "kind" in args:
        found = [u for u in found if u.kind == args["kind"]]
    return rows(found, args)


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    u = _require(ctx, args["id"])
    roles = [row(r) for r in users.list_roles(ctx.db, user_id=u.id)]
    return {**row(u), "roles": roles}


def _create(ctx: AdminContext, args: dict[str, Any]) -> Any:
    if users.get_user(ctx.db, args["id"]) is not None:
        raise ConflictError(f"user {args['id']} exists already")
    return row(
        users.upsert_user(ctx.db, args["id"], args["kind"], args.get("display_name"), now=ctx.now())
    )


def _update(ctx: AdminContext, args: dict[str, Any]) -> Any:
    u = _require(ctx, args["id"])
    with_name = users.upsert_user(ctx.db, u.id, u.kind, args["display_name"], now=ctx.now())
    return row(with_name)


def _dependents(ctx: AdminContext, id: str) -> dict[str, int]:
    checks = {
        "roles": "SELECT COUNT(*) FROM user_roles WHERE user_id=?",
        "members": "SELECT COUNT(*) FROM agent_group_members WHERE user_id=?",
        "user_dms": "SELECT COUNT(*) FROM user_dms WHERE user_id=?",
    }
    found = {k: int(ctx.db.execute(sql, (id,)).fetchone()[0]) for k, sql in checks.items()}
    return {k: n for k, n in found.items() if n}


def _delete(ctx: AdminContext, args: dict[str, Any]) -> Any:
    u = _require(ctx, args["id"])
    deps = _dependents(ctx, u.id)
    if deps and not args.get("force"):
        listing = ", ".join(f"{n} {k}" for k, n in deps.items())
        raise ConflictError(f"user {u.id} still has {listing}; use --force to delete them too")
    users.delete_user(ctx.db, u.id)
    return {"deleted": u.id, "cascaded": deps}


RESOURCE = Resource(
    name="users",
    singular="user",
    help="People the host knows, by namespaced id '<channel>:<handle>'.",
    verbs=(
        Verb(
            "list",
            _list,
            "List users.",
            options=(Opt("kind", "Only users of this channel kind."), LIMIT),
            kind="list",
        ),
        Verb("get", _get, "Show one user with their roles.", options=(USER_ID,), kind="get"),
        Verb(
            "create",
            _create,
            "Add a user.",
            access="approval",
            options=(
                USER_ID,
                Opt("kind", "Channel type the user was first seen on.", required=True),
                Opt("display_name", "Display name."),
            ),
        ),
        Verb(
            "update",
            _update,
            "Change a user's display name.",
            access="approval",
            options=(USER_ID, Opt("display_name", "Display name.", required=True)),
        ),
        Verb(
            "delete",
            _delete,
            "Delete a user; refuses while they hold roles, memberships or DMs unless --force.",
            access="approval",
            options=(USER_ID, FORCE),
        ),
    ),
)
