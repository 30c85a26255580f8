"""``approvals``: every pending decision, and the operator's answer to one.

``list`` shows all four kinds: ``approval`` (``pending_approvals``: new agents, packages,
MCP servers, CLI commands), ``sender`` (unknown sender, ``pending_sender_approvals``),
``channel`` (unknown chat, ``pending_channel_approvals``) and ``question``
(``pending_questions``), with the card's expiry and its reply ``code``. Every verb takes
an id or a reply code. ``approve``/``reject`` hand the decision to the approvals engine
(``carapace.permissions.approvals.decide``) as a click of ``--user`` (default: the first owner);
a decision the engine refused (not authorised, decided already, the session gone) is an
error, never reported as done. With no host running the decision and its effects are
recorded at once; what needs a channel (replaying a held message, editing the card) runs
when the host next starts.
"""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.frames import AdminError
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import ID, LIMIT, row
from carapace.db import approvals, users
from carapace.errors import ConflictError, NotFoundError, ValidationError
from carapace.jsonutil import loads_or
from carapace.permissions import approvals as engine
from carapace.permissions import cards

KINDS = ("approval", "sender", "channel", "question")
_ACTIONS = {"sender": "unknown_sender", "channel": "unknown_channel", "question": "ask_question"}


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found: list[dict[str, Any]] = []
    for d in engine.list_pending(ctx.db):
        a = approvals.get_approval(ctx.db, d["id"]) if d["kind"] == "approval" else None
        action = a.action if a is not None else _ACTIONS.get(d["kind"], d["kind"])
        found.append({"id": d["id"], "kind": d["kind"], "action": action, "code": d["code"],
                      "title": d["title"], "agent_group_id": d["agent_group_id"],
                      "session_id": d.get("session_id"), "created_at": d["created_at"],
                      "expires_at": d["expires_at"], "question": d["question"]})  # fmt: skip
    if "kind" in args:
        found = [d for d in found if d["kind"] == args["kind"]]
    return found[: args.get("limit") or 200]


def _card_id(ctx: AdminContext, id: str) -> str:
    """An id, or a card's reply code, as the pending decision's id."""
    if engine.is_pending(ctx.db, id):
        return id
    card = cards.get_by_code(ctx.db, id) if len(id) <= cards.CODE_LEN + 2 else None
    if card is not None and card.status == "pending":
        return card.card_id
    c = cards.get_card(ctx.db, card.card_id if card is not None else id)
    if c is not None:
        raise ConflictError(f"{c.kind} {c.card_id} is {c.status} already")
    raise NotFoundError(f"no pending decision {id!r}")


def _find(ctx: AdminContext, id: str) -> tuple[str, dict[str, Any]]:
    db = ctx.db
    id = _card_id(ctx, id)
    card = cards.get_card(db, id)
    extra = {"code": card.code, "expires_at": card.expires_at} if card else {}
    a = approvals.get_approval(db, id)
    if a is not None:
        d = row(a)
        d["payload"] = loads_or(a.payload, a.payload)
        d["options_json"] = loads_or(a.options_json, [])
        return "approval", {**d, **extra}
    s = approvals.get_sender_approval(db, id)
    if s is not None:
        d = row(s)
        d["original_message"] = loads_or(s.original_message, s.original_message)
        return "sender", {**d, **extra}
    c = approvals.get_channel_approval(db, id)
    if c is not None:
        d = row(c)
        d["original_message"] = loads_or(c.original_message, c.original_message)
        return "channel", {**d, **extra}
    q = approvals.get_question(db, id)
    if q is not None:
        d = row(q)
        d["options_json"] = loads_or(q.options_json, [])
        return "question", {**d, **extra}
    raise NotFoundError(f"no pending decision {id!r}")


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    kind, data = _find(ctx, args["id"])
    return {"kind": kind, **data}


# the engine's refusals → the admin error code
_REFUSED: dict[str, Any] = {
    "unauthorised": "permission-denied",
    "gone": "handler-error",
    "invalid": "invalid-args",
}


def _decide(ctx: AdminContext, args: dict[str, Any], approve: bool) -> Any:
    card_id = _card_id(ctx, args["id"])
    clicker = args.get("user")
    if clicker is None:
        owners = users.owners(ctx.db)
        clicker = owners[0] if owners else None
    if clicker is None:
        raise ValidationError("no owner is configured: pass --user USER_ID")
    result = engine.decide(ctx, card_id, approve, clicker)
    status = result.get("status", "")
    if status in _REFUSED:
        raise AdminError(_REFUSED[status], f"{card_id}: {result.get('message') or status}")
    return {"id": card_id, "kind": result.get("kind"), "decision": status,
            "message": result.get("message"), "applied": True}  # fmt: skip


def _approve(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return _decide(ctx, args, True)


def _reject(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return _decide(ctx, args, False)


USER = Opt("user", "Who decides (a user id; default: the first owner).")

RESOURCE = Resource(
    name="approvals",
    singular="pending decision",
    help="Pending decisions of every kind: " + ", ".join(KINDS) + ".",
    verbs=(
        Verb(
            "list",
            _list,
            "List pending decisions (id, kind, action, reply code, expiry, …).",
            options=(Opt("kind", "Only this kind.", type="enum", choices=KINDS), LIMIT),
            kind="list",
        ),
        Verb(
            "get",
            _get,
            "Show one pending decision in full (by id or reply code).",
            options=(ID,),
            kind="get",
        ),
        Verb(
            "approve",
            _approve,
            "Approve a pending decision (by id or reply code, as the operator).",
            host_only=True,
            options=(ID, USER),
        ),
        Verb(
            "reject",
            _reject,
            "Reject a pending decision (by id or reply code, as the operator).",
            host_only=True,
            options=(ID, USER),
        ),
    ),
)
