"""``destinations``: an agent's name map and ACL (``agent_destinations``).

Every change is projected at once into the ``destinations`` table of the agent's running
sessions (through the projection hooks of ``carapace.db.destinations``).
"""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import LIMIT, group_id, row, rows
from carapace.db import destinations

AGENT = Opt("agent_group_id", "The agent group (id or folder).", required=True)
NAME = Opt("local_name", "The name the agent uses (lower case, digits, '-').", required=True)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["agent_group_id"]) if "agent_group_id" in args else None
    return rows(destinations.list_destinations(ctx.db, ag), args)


def _add(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["agent_group_id"])
    target = args["target_id"]
    if args["target_type"] == "agent":
        target = group_id(ctx, target)
    dest = destinations.add_destination(
        ctx.db, ag, args["local_name"], args["target_type"], target, now=ctx.now()
    )
    return row(dest)


def _remove(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["agent_group_id"])
    destinations.remove_destination(ctx.db, ag, args["local_name"])
    return {"agent_group_id": ag, "local_name": args["local_name"], "removed": True}


RESOURCE = Resource(
    name="destinations",
    singular="destination",
    help="Where an agent may send: named chats and agents (its ACL).",
    scope_field="agent_group_id",
    group_scope=True,
    verbs=(
        Verb(
            "list",
            _list,
            "List destinations.",
            options=(Opt("agent_group_id", "Only this agent group (id or folder)."), LIMIT),
            kind="list",
        ),
        Verb(
            "add",
            _add,
            "Let an agent address a chat or another agent by a local name.",
            access="approval",
            options=(
                AGENT,
                NAME,
                Opt(
                    "target_type",
                    "Kind of target.",
                    type="enum",
                    choices=destinations.TARGET_TYPES,
                    required=True,
                ),
                Opt(
                    "target_id",
                    "A messaging group id, or an agent group id or folder.",
                    required=True,
                ),
            ),
        ),
        Verb(
            "remove",
            _remove,
            "Remove a destination.",
            access="approval",
            options=(AGENT, NAME),
        ),
    ),
)
