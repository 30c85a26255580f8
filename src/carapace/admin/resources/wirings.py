"""``wirings``: which agent groups answer in which chat (``messaging_group_agents``).

Fixes spec §11.1 item 9: ``create`` also creates the chat's destination for the agent
and every change is projected into the agent's running sessions; ``priority`` is settable.
"""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import ID, LIMIT, group_id, need_change, require, row, rows
from carapace.db import messaging

_FIELDS = (
    "engage_mode",
    "engage_pattern",
    "sender_scope",
    "ignored_message_policy",
    "session_mode",
    "priority",
)
WIRING_OPTS = (
    Opt("engage_mode", "When the agent engages.", type="enum", choices=messaging.ENGAGE_MODES),
    Opt("engage_pattern", "Regex for engage mode 'pattern' ('.' = every message)."),
    Opt("sender_scope", "Who may engage it.", type="enum", choices=messaging.SENDER_SCOPES),
    Opt(
        "ignored_message_policy",
        "What happens to messages that do not engage.",
        type="enum",
        choices=messaging.IGNORED_POLICIES,
    ),
    Opt("session_mode", "How sessions are keyed.", type="enum", choices=messaging.SESSION_MODES),
    Opt("priority", "Fan-out order (higher first).", type="int"),
)


def _require(ctx: AdminContext, id: str) -> messaging.Wiring:
    return require(messaging.get_wiring(ctx.db, id), "wiring", id)


def _owner(ctx: AdminContext, args: dict[str, Any]) -> str | None:
    w = messaging.get_wiring(ctx.db, args["id"])
    return w.agent_group_id if w else None


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag = group_id(ctx, args["agent_group_id"]) if "agent_group_id" in args else None
    found = messaging.list_wirings(ctx.db, ag)
    if "messaging_group_id" in args:
        found = [w for w in found if w.messaging_group_id == args["messaging_group_id"]]
    return rows(found, args)


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return row(_require(ctx, args["id"]))


def _create(ctx: AdminContext, args: dict[str, Any]) -> Any:
    fields = {k: args[k] for k in _FIELDS if k in args}
    w = messaging.create_wiring(
        ctx.db,
        args["messaging_group_id"],
        group_id(ctx, args["agent_group_id"]),
        id=args.get("id"),
        now=ctx.now(),
        **fields,
    )
    dest = ctx.db.execute(
        "SELECT local_name FROM agent_destinations WHERE agent_group_id=? "
        "AND target_type='channel' AND target_id=? ORDER BY created_at LIMIT 1",
        (w.agent_group_id, w.messaging_group_id),
    ).fetchone()
    return {**row(w), "destination": dest[0] if dest else None}


def _update(ctx: AdminContext, args: dict[str, Any]) -> Any:
    w = _require(ctx, args["id"])
    return row(messaging.update_wiring(ctx.db, w.id, **need_change(args, _FIELDS)))


def _delete(ctx: AdminContext, args: dict[str, Any]) -> Any:
    w = _require(ctx, args["id"])
    messaging.delete_wiring(ctx.db, w.id)
    return {"deleted": w.id, "destination_kept": True}


RESOURCE = Resource(
    name="wirings",
    singular="wiring",
    help="Wirings of chats to agent groups: engage mode, sender scope, session mode, priority.",
    scope_field="agent_group_id",
    verbs=(
        Verb(
            "list",
            _list,
            "List wirings.",
            options=(
                Opt("messaging_group_id", "Only wirings of this chat."),
                Opt("agent_group_id", "Only wirings of this agent group (id or folder)."),
                LIMIT,
            ),
            kind="list",
        ),
        Verb("get", _get, "Show one wiring.", options=(ID,), kind="get", owner=_owner),
        Verb(
            "create",
            _create,
            "Wire a chat to an agent group; also creates the chat's destination for the "
            "agent and refreshes its running sessions.",
            access="approval",
            options=(
                Opt("messaging_group_id", "The chat.", required=True),
                Opt("agent_group_id", "The agent group (id or folder).", required=True),
                *WIRING_OPTS,
                Opt("id", "Id to use (default: a generated mga-<ms>-<rand6>)."),
            ),
        ),
        Verb(
            "update",
            _update,
            "Change a wiring.",
            access="approval",
            options=(ID, *WIRING_OPTS),
            owner=_owner,
        ),
        Verb(
            "delete",
            _delete,
            "Remove a wiring (the agent's destination for the chat is kept; remove it with "
            "destinations remove).",
            access="approval",
            options=(ID,),
            owner=_owner,
        ),
    ),
)
