"""``usage``: model calls through the host's egress proxy, summed, with estimated cost."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import group_id
from carapace.proxy import report
from carapace.proxy.prices import PriceTable

_FILTERS = (
    Opt("group", "Only this agent group (id or folder)."),
    Opt("model", "Only this model."),
    Opt("since", "From this day on (YYYY-MM-DD, UTC)."),
    Opt("until", "Up to and including this day (YYYY-MM-DD, UTC)."),
)


def _filters(ctx: AdminContext, args: dict[str, Any]) -> dict[str, Any]:
    out = {k: args.get(k) for k in ("model", "since", "until")}
    out["group"] = group_id(ctx, args["group"]) if args.get("group") else None
    return out


def _report(ctx: AdminContext, args: dict[str, Any]) -> Any:
    prices = PriceTable.from_settings(ctx.settings.extra)
    found = report.report(ctx.db, prices, by=args.get("by"), **_filters(ctx, args))
    return found[: args["limit"]] if args.get("limit") else found


def _export(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return report.export_csv(ctx.db, **_filters(ctx, args))


RESOURCE = Resource(
    name="usage",
    singular="usage",
    help="Model calls made through the host's egress proxy: tokens, latency and estimated "
    "cost (price table in carapace.toml [prices]).",
    verbs=(
        Verb(
            "report",
            _report,
            "Sum calls, tokens and estimated cost (US$) by period, group and/or model.",
            options=(
                Opt("by", "Comma list of day|week|month|group|model (default day,group)."),
                *_FILTERS,
                Opt("limit", "At most this many rows (default: all).", type="int", minimum=1),
            ),
            kind="list",
        ),
        Verb(
            "export",
            _export,
            "Every recorded call as CSV (redirect to a file).",
            options=_FILTERS,
            kind="get",
        ),
    ),
)
