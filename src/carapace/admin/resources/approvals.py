"""``approvals``: every pending decision, and the operator's answer to one.

``list`` shows all four kinds: ``approval`` (``pending_approvals``: packages, MCP servers,
CLI commands, credentials), ``sender`` (unknown sender, ``pending_sender_approvals``),
``channel`` (unknown chat, ``pending_channel_approvals``) and ``question``
(``pending_questions``). ``approve``/``reject`` hand the decision to the host's approvals
engine (``carapace.host.approvals.decide``); without it only the status of a
``pending_approvals`` row is recorded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import ID, LIMIT, row
from carapace.db import approvals, users
from carapace.errors import CarapaceError, ConflictError, NotFoundError, ValidationError
from carapace.jsonutil import loads_or

KINDS = ("approval", "sender", "channel", "question")
ENGINE_MISSING = "the approvals action engine is not available"


def _summaries(ctx: AdminContext) -> list[dict[str, Any]]:
    db = ctx.db
    out: list[dict[str, Any]] = []
    for a in approvals.list_approvals(db, "pending"):
        out.append(_summary(a.approval_id, "approval", a.action, a.title, a.agent_group_id,
                            a.session_id, a.created_at, a.expires_at))  # fmt: skip
    for s in approvals.list_sender_approvals(db):
        title = s.title or f"Unknown sender {s.sender_name or s.sender_identity}"
        out.append(_summary(s.id, "sender", "unknown_sender", title, s.agent_group_id, None,
                            s.created_at, None))  # fmt: skip
    for c in approvals.list_channel_approvals(db):
        title = c.title or f"Unknown chat {c.messaging_group_id}"
        out.append(_summary(c.messaging_group_id, "channel", "unknown_channel", title,
                            c.agent_group_id, None, c.created_at, None))  # fmt: skip
    for q in approvals.list_questions(db):
        r = db.execute("SELECT agent_group_id FROM sessions WHERE id=?", (q.session_id,)).fetchone()
        out.append(_summary(q.question_id, "question", "ask_question", q.title,
                            r[0] if r else None, q.session_id, q.created_at, None))  # fmt: skip
    out.sort(key=lambda d: (d["created_at"], d["id"]))
    return out


def _summary(
    id: str,
    kind: str,
    action: str,
    title: str,
    agent_group_id: str | None,
    session_id: str | None,
    created_at: str,
    expires_at: str | None,
) -> dict[str, Any]:
    return {
        "id": id,
        "kind": kind,
        "action": action,
        "title": title,
        "agent_group_id": agent_group_id,
        "session_id": session_id,
        "created_at": created_at,
        "expires_at": expires_at,
    }


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found = _summaries(ctx)
    if "kind" in args:
        found = [d for d in found if d["kind"] == args["kind"]]
    return found[: args.get("limit") or 200]


def _find(ctx: AdminContext, id: str) -> tuple[str, dict[str, Any]]:
    db = ctx.db
    a = approvals.get_approval(db, id)
    if a is not None:
        d = row(a)
        d["payload"] = loads_or(a.payload, a.payload)
        d["options_json"] = loads_or(a.options_json, [])
        return "approval", d
    s = approvals.get_sender_approval(db, id)
    if s is not None:
        d = row(s)
        d["original_message"] = loads_or(s.original_message, s.original_message)
        return "sender", d
    c = approvals.get_channel_approval(db, id)
    if c is not None:
        d = row(c)
        d["original_message"] = loads_or(c.original_message, c.original_message)
        return "channel", d
    q = approvals.get_question(db, id)
    if q is not None:
        d = row(q)
        d["options_json"] = loads_or(q.options_json, [])
        return "question", d
    raise NotFoundError(f"no pending decision {id!r}")


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    kind, data = _find(ctx, args["id"])
    return {"kind": kind, **data}


def _engine() -> Callable[..., Any] | None:
    try:
        module = importlib.import_module("carapace.host.approvals")
    except ModuleNotFoundError as exc:
        if exc.name in ("carapace.host.approvals", "carapace.host"):
            return None
        raise
    decide = getattr(module, "decide", None)
    return decide if callable(decide) else None


def _decide(ctx: AdminContext, args: dict[str, Any], approve: bool) -> Any:
    kind, data = _find(ctx, args["id"])
    clicker = args.get("user")
    if clicker is None:
        owners = users.owners(ctx.db)
        clicker = owners[0] if owners else None
    decision = "approved" if approve else "rejected"
    decide = _engine()
    if decide is not None:
        if clicker is None:
            raise ValidationError("no owner is configured: pass --user USER_ID")
        result = decide(ctx, args["id"], approve, clicker)
        return {"id": args["id"], "kind": kind, "decision": decision, "applied": True,
                "result": result}  # fmt: skip
    if kind != "approval":
        raise CarapaceError(f"{ENGINE_MISSING}; a {kind} request can only be decided by it")
    if data["status"] != "pending":
        raise ConflictError(f"approval {args['id']} is already {data['status']}")
    if not approvals.set_approval_status(ctx.db, args["id"], decision):
        raise ConflictError(f"approval {args['id']} was decided meanwhile")
    return {"id": args["id"], "kind": kind, "decision": decision, "applied": False,
            "note": f"{ENGINE_MISSING}; only the status was recorded"}  # fmt: skip


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
            "List pending decisions (id, kind, action, title, …).",
            options=(Opt("kind", "Only this kind.", type="enum", choices=KINDS), LIMIT),
            kind="list",
        ),
        Verb("get", _get, "Show one pending decision in full.", options=(ID,), kind="get"),
        Verb(
            "approve",
            _approve,
            "Approve a pending decision (as the operator).",
            host_only=True,
            options=(ID, USER),
        ),
        Verb(
            "reject",
            _reject,
            "Reject a pending decision (as the operator).",
            host_only=True,
            options=(ID, USER),
        ),
    ),
)
