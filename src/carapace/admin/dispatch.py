"""The admin dispatcher: one request frame in, one response frame out (spec/host.md §8.3).

The host calls ``dispatch`` for every line on ``data/ncl.sock`` (via ``handle_line``) and
for every ``cli_request`` system row of a runner; the CLI calls it directly when no host
runs. Steps, for a frame ``{id, command, args}`` and a caller:

1. Resolve the command (``groups-get``; a trailing positional id may be joined to it with
   dashes, dashes and all — spec §11.1 item 10 fixed) → ``unknown-command``.
2. Agent callers: ``cli_scope`` of their agent group — ``disabled`` → ``forbidden``;
   ``group`` → only resources that allow it, only their own agent group (raw
   ``agent_group_id``/``group``/group ``id`` args checked, then auto-filled), never a
   ``cli_scope`` arg; rows of other groups are reported exactly like missing ones.
3. Options checked and converted (``invalid-args``; unknown options are refused).
4. Agent callers and ``approval`` verbs → a ``pending_approvals`` row (action
   ``cli_command``) and ``approval-pending``; ``run_approved_cli_command`` runs it later.
5. The handler; ``not-found`` / ``invalid-args`` / ``handler-error`` from its errors.
6. Lists are filtered to the caller's group for agents in group scope.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.frames import AdminError, fail, ok
from carapace.admin.helptext import global_help, resource_help
from carapace.admin.registry import (
    Resource,
    Verb,
    coerce_args,
    commands,
    is_help,
    normalize_keys,
    resolve,
    resources,
)
from carapace.db import groups
from carapace.db.sessions import Session, get_session
from carapace.errors import CarapaceError, NotFoundError, ValidationError
from carapace.jsonutil import dumps
from carapace.permissions.approvals import Applied, register_handler
from carapace.permissions.cards import Ctx

logger = logging.getLogger(__name__)

HOST_CALLER: dict[str, Any] = {"caller": "host"}
_GROUP_KEYS = ("agent_group_id", "group")
APPROVAL_OPTIONS = [
    {"label": "Approve", "selectedLabel": "✅ Approved", "value": "approve"},
    {"label": "Reject", "selectedLabel": "❌ Rejected", "value": "reject"},
]


def dispatch(ctx: AdminContext, frame: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
    """Run one request frame for ``caller``; always returns a response frame."""
    raw_id = frame.get("id") if isinstance(frame, dict) else None
    frame_id = raw_id if isinstance(raw_id, str) and raw_id else "unknown"
    try:
        return ok(frame_id, _dispatch(ctx, frame, caller, frame_id))
    except AdminError as exc:
        return fail(frame_id, exc.code, str(exc))
    except NotFoundError as exc:
        return fail(frame_id, "not-found", str(exc))
    except ValidationError as exc:
        return fail(frame_id, "invalid-args", str(exc))
    except CarapaceError as exc:
        return fail(frame_id, "handler-error", str(exc))
    except sqlite3.Error as exc:
        logger.exception("admin command %r failed", frame.get("command"))
        return fail(frame_id, "handler-error", f"database error: {exc}")
    except Exception as exc:  # one bad command must not take the host down
        logger.exception("admin command %r failed", frame.get("command"))
        return fail(frame_id, "handler-error", f"{type(exc).__name__}: {exc}")


def handle_line(ctx: AdminContext, line: bytes, caller: dict[str, Any]) -> bytes:
    """One socket line in (a RequestFrame), one line out (a ResponseFrame, ``\\n``-ended)."""
    try:
        frame = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        resp = fail("unknown", "transport-error", f"bad frame: {exc}")
    else:
        problem = frame_problem(frame)
        if problem is not None:
            fid = frame.get("id") if isinstance(frame, dict) else None
            resp = fail(fid if isinstance(fid, str) else "unknown", "transport-error", problem)
        else:
            resp = dispatch(ctx, frame, caller)
    return encode(resp)


def encode(resp: dict[str, Any]) -> bytes:
    text = json.dumps(resp, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text + "\n").encode("utf-8")


def frame_problem(frame: Any) -> str | None:
    """Why ``frame`` is not a RequestFrame (None when it is one)."""
    if not isinstance(frame, dict):
        return "bad frame: expected a JSON object {id, command, args}"
    if not isinstance(frame.get("id"), str) or not frame["id"]:
        return "bad frame: missing string id"
    if not isinstance(frame.get("command"), str) or not frame["command"].strip():
        return "bad frame: missing string command"
    if "args" in frame and frame["args"] is not None and not isinstance(frame["args"], dict):
        return "bad frame: args must be an object"
    return None


def run_approved_cli_command(ctx: AdminContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply an approved ``cli_command`` approval: re-dispatch its frame as the host.

    The scope checks already ran when the agent asked; returns the response frame (the
    approvals engine tells the agent the outcome).
    """
    frame = payload.get("frame") if isinstance(payload, dict) else None
    problem = frame_problem(frame)
    if problem is not None or not isinstance(frame, dict):
        return fail("unknown", "invalid-args", problem or "bad payload")
    return dispatch(ctx, frame, HOST_CALLER)


def apply_cli_command(ctx: Ctx, session: Session, payload: dict[str, Any], by: str) -> Applied:
    """The approvals engine's handler for an approved ``cli_command`` (registered below)."""
    command = str(payload.get("command") or "")
    result = run_approved_cli_command(ctx, payload)  # type: ignore[arg-type]
    return Applied(f"Your `carapace {command}` request was approved and executed.\n\n"
                   f"{dumps(result)}")  # fmt: skip


register_handler("cli_command", apply_cli_command)


def _dispatch(
    ctx: AdminContext, frame: dict[str, Any], caller: dict[str, Any], frame_id: str
) -> Any:
    problem = frame_problem(frame)
    if problem is not None:
        raise AdminError("transport-error", problem)
    command = frame["command"].strip()
    args: dict[str, Any] = dict(frame.get("args") or {})
    resolved = resolve(command)
    if resolved is None:
        raise AdminError("unknown-command", f"unknown command {command!r} (try 'help')")
    name, positional = resolved
    if positional is not None:
        if "id" in normalize_keys(args):
            raise ValidationError(f"id given twice: {positional!r} and --id")
        args["id"] = positional
    agent = _agent(ctx, caller)
    if is_help(name):
        return _help(name, agent)
    res, verb = commands()[name]
    if agent is not None:
        _gate(ctx, res, verb, args, agent)
    if positional is not None and verb.option("id") is None:
        raise ValidationError(f"unexpected argument {positional!r}")
    values = coerce_args(verb, normalize_keys(args))
    if agent is not None:
        ag, scope = agent
        owner = verb.owner
        if scope == "group" and owner is not None and "id" in values and owner(ctx, values) != ag:
            raise NotFoundError(f"no {res.singular} {values['id']!r}")
        if verb.access == "approval":
            _request_approval(ctx, caller, frame_id, name, values)
    data = verb.handler(ctx, values)
    if agent is not None and agent[1] == "group":
        data = _post_filter(res, verb, data, agent[0], values)
    return data


def _agent(ctx: AdminContext, caller: dict[str, Any]) -> tuple[str, str] | None:
    """None for the operator; (agent group id, cli_scope) for an agent caller."""
    kind = caller.get("caller") if isinstance(caller, dict) else None
    if kind == "host":
        return None
    if kind != "agent":
        raise AdminError("permission-denied", f"unknown caller {kind!r}")
    ag = caller.get("agentGroupId")
    if not isinstance(ag, str) or not ag:
        raise AdminError("permission-denied", "agent caller without an agentGroupId")
    cfg = groups.get_container_config(ctx.db, ag)
    scope = cfg.cli_scope if cfg is not None else "group"
    if scope not in groups.CLI_SCOPES:
        scope = "disabled"
    return ag, scope


def _help(name: str, agent: tuple[str, str] | None) -> str:
    if agent is not None and agent[1] == "disabled":
        raise AdminError("forbidden", "the admin CLI is disabled for this agent group")
    group_only = agent is not None and agent[1] == "group"
    if name == "help":
        allowed = [r.name for r in resources() if r.group_scope] if group_only else None
        return global_help(allowed)
    res = next(r for r in resources() if f"{r.name}-help" == name)
    if group_only and not res.group_scope:
        raise AdminError("forbidden", f"'{res.name}' is not available in group scope")
    return resource_help(res)


def _is_own(ctx: AdminContext, value: Any, ag: str) -> bool:
    if value == ag:
        return True
    if not isinstance(value, str):
        return False
    g = groups.get_agent_group_by_folder(ctx.db, value)
    return g is not None and g.id == ag


def _gate(
    ctx: AdminContext, res: Resource, verb: Verb, args: dict[str, Any], agent: tuple[str, str]
) -> None:
    """Scope checks for agent callers (on the raw keys), then auto-fill of the group."""
    ag, scope = agent
    if scope == "disabled":
        raise AdminError("forbidden", "the admin CLI is disabled for this agent group")
    if verb.host_only:
        raise AdminError("forbidden", f"'{res.command(verb)}' is for the operator only")
    if scope != "group":
        return
    if not res.group_scope or not verb.group_scope:
        raise AdminError("forbidden", f"'{res.command(verb)}' is not available in group scope")
    group_keys = (*_GROUP_KEYS, "id") if res.id_is_group else _GROUP_KEYS
    for key, value in args.items():
        norm = str(key).replace("-", "_")
        if norm == "cli_scope":
            raise AdminError("forbidden", "an agent cannot change its own cli_scope")
        if norm in group_keys and not _is_own(ctx, value, ag):
            raise AdminError("forbidden", "in group scope only your own agent group is reachable")
    present = {str(k).replace("-", "_") for k in args}
    for key in group_keys:
        if key not in present and verb.option(key) is not None:
            args[key] = ag


def _request_approval(
    ctx: AdminContext, caller: dict[str, Any], frame_id: str, command: str, values: dict[str, Any]
) -> None:
    """Hold an agent's command for an admin's decision: a ``pending_approvals`` row with its
    card (delivered to the approver, expiring), through the approvals engine."""
    from carapace.permissions.approvals import request_approval
    from carapace.permissions.card_text import AGENT_MARK, quote_agent

    sid = caller.get("sessionId")
    session = get_session(ctx.db, sid) if isinstance(sid, str) else None
    if session is None:
        raise AdminError("handler-error", "session not found")
    g = groups.get_agent_group(ctx.db, session.agent_group_id)
    flags = "\n".join(
        f"  --{str(k).replace('_', '-')[:40]} {quote_agent(v)}" for k, v in values.items()
    )
    who = quote_agent(g.name if g else session.agent_group_id, 80)
    question = (f"Agent {who} wants to run `carapace admin {command}` with these options "
                f"{AGENT_MARK}:\n{flags or '  (none)'}")  # fmt: skip
    payload = {"frame": {"id": frame_id, "command": command, "args": values},
               "question": question}  # fmt: skip
    aid = request_approval(ctx, session.id, "cli_command", payload, f"CLI: {command}", question)
    if aid is None:
        raise AdminError("handler-error", "no owner or admin is configured to approve it")
    raise AdminError("approval-pending", f"{command} needs an admin's approval; requested as {aid}")


def _post_filter(res: Resource, verb: Verb, data: Any, ag: str, values: dict[str, Any]) -> Any:
    field = res.scope_field
    if field is None:
        raise AdminError("forbidden", f"'{res.name}' rows carry no agent group")
    if verb.kind == "list" and isinstance(data, list):
        return [r for r in data if isinstance(r, dict) and r.get(field) == ag]
    foreign = isinstance(data, dict) and field in data and data[field] != ag
    if verb.kind == "get" and verb.owner is None and foreign:
        raise NotFoundError(f"no {res.singular} {values.get('id')!r}")
    return data
