"""``budgets``: per agent group (or ``*``, the default for every group) token/money limits
that the host's egress proxy enforces on model calls."""

from __future__ import annotations

import dataclasses
from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import DEFAULT_LIMIT, LIMIT, group_id
from carapace.errors import NotFoundError, ValidationError
from carapace.proxy import budgets

SCOPE = Opt("scope", "An agent group (id or folder), or * for the default.", required=True)


def _scope(ctx: AdminContext, args: dict[str, Any]) -> str:
    raw = str(args["scope"])
    return raw if raw == budgets.DEFAULT_SCOPE else group_id(ctx, raw)


def _number(raw: Any, flag: str, integer: bool) -> float | int | None:
    text = str(raw).strip().lower()
    if text in ("none", "off", "-1", ""):
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number of tokens" if integer else "an amount in US dollars"
        raise ValidationError(f"--{flag} takes {kind}, or none (got {raw!r})")
    if value < 0:
        raise ValidationError(f"--{flag} must not be negative")
    return value


def _set(ctx: AdminContext, args: dict[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for name in budgets.LIMIT_FIELDS:
        if name in args:
            values[name] = _number(args[name], name.replace("_", "-"), name.endswith("tokens"))
    if "warn_share" in args:
        values["warn_share"] = _number(args["warn_share"], "warn-share", False)
    if not values:
        raise ValidationError(
            "nothing to set: give --daily-tokens, --monthly-tokens, --daily-usd, "
            "--monthly-usd or --warn-share"
        )
    return dataclasses.asdict(budgets.set_budget(ctx.db, _scope(ctx, args), values, ctx.now()))


def _reset(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return dataclasses.asdict(budgets.reset_budget(ctx.db, _scope(ctx, args), ctx.now()))


def _delete(ctx: AdminContext, args: dict[str, Any]) -> Any:
    scope = _scope(ctx, args)
    if not budgets.delete_budget(ctx.db, scope):
        raise NotFoundError(f"no budget for {scope!r}")
    return {"scope": scope, "deleted": True}


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    found = [dataclasses.asdict(b) for b in budgets.list_budgets(ctx.db)]
    return found[: args.get("limit") or DEFAULT_LIMIT]


_LIMITS = (
    Opt("daily_tokens", "Tokens per UTC day (none: no limit)."),
    Opt("monthly_tokens", "Tokens per UTC month (none: no limit)."),
    Opt("daily_usd", "Estimated US$ per UTC day (none: no limit)."),
    Opt("monthly_usd", "Estimated US$ per UTC month (none: no limit)."),
    Opt("warn_share", "Warn the group's owner/admins at this share (default 0.8)."),
)

RESOURCE = Resource(
    name="budgets",
    singular="budget",
    help="Limits on model usage per agent group (scope * is the default for all groups); "
    "at 100% the host refuses further model calls and the user is told.",
    verbs=(
        Verb("list", _list, "List the budgets.", options=(LIMIT,), kind="list"),
        Verb(
            "set",
            _set,
            "Set or raise limits (unset fields fall back to scope *).",
            access="approval",
            options=(SCOPE, *_LIMITS),
        ),
        Verb(
            "reset",
            _reset,
            "Start counting afresh from now (earlier calls stop counting).",
            access="approval",
            options=(SCOPE,),
        ),
        Verb("delete", _delete, "Remove a scope's budget.", access="approval", options=(SCOPE,)),
    ),
)
