"""Usage reports over ``carapace_usage``: sums by period and/or group and/or model, with
the estimated cost from the current price table; and the raw rows as CSV."""

from __future__ import annotations

import csv
import io
import sqlite3
from datetime import date
from typing import Any

from carapace.errors import ValidationError
from carapace.proxy.prices import PriceTable
from carapace.proxy.usage import COLUMNS

DIMENSIONS = ("day", "week", "month", "group", "model")
PERIODS = ("day", "week", "month")


def parse_by(raw: str | None) -> list[str]:
    dims = [d.strip() for d in (raw or "day,group").split(",") if d.strip()]
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not dims:
        raise ValidationError(f"--by takes a comma list of {', '.join(DIMENSIONS)} (got {raw!r})")
    if sum(d in PERIODS for d in dims) > 1:
        raise ValidationError("--by takes at most one of day, week, month")
    return dims


def _check_day(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValidationError(f"{flag} takes a date YYYY-MM-DD (got {value!r})")


def _where(
    group: str | None, model: str | None, since: str | None, until: str | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if group:
        clauses.append("agent_group_id=?")
        params.append(group)
    if model:
        clauses.append("model=?")
        params.append(model)
    since = _check_day(since, "--since")
    until = _check_day(until, "--until")
    if since:
        clauses.append("at>=?")
        params.append(since)
    if until:  # inclusive day
        clauses.append("substr(at,1,10)<=?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _period(day: str, kind: str) -> str:
    if kind == "day":
        return day
    if kind == "month":
        return day[:7]
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def report(
    db: sqlite3.Connection,
    prices: PriceTable,
    *,
    by: str | None = None,
    group: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    dims = parse_by(by)
    where, params = _where(group, model, since, until)
    rows = db.execute(
        "SELECT substr(at,1,10) AS day, agent_group_id, provider, COALESCE(model,'') AS model,"
        " COUNT(*) AS calls, SUM(status>=400) AS errors, SUM(input_tokens) AS i,"
        " SUM(output_tokens) AS o, SUM(cache_read_tokens) AS cr, SUM(cache_write_tokens) AS cw,"
        f" SUM(latency_ms) AS latency FROM carapace_usage{where}"
        " GROUP BY day, agent_group_id, provider, model ORDER BY day",
        params,
    ).fetchall()
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key_parts: list[str] = []
        for d in dims:
            if d in PERIODS:
                key_parts.append(_period(r["day"], d))
            elif d == "group":
                key_parts.append(r["agent_group_id"])
            else:
                key_parts.append(r["model"])
        key = tuple(key_parts)
        entry = out.get(key)
        if entry is None:
            entry = {("period" if d in PERIODS else d): v for d, v in zip(dims, key, strict=True)}
            entry.update(calls=0, errors=0, input_tokens=0, output_tokens=0,
                         cache_read_tokens=0, cache_write_tokens=0, cost_usd=0.0,
                         unpriced_calls=0, latency_ms_total=0.0)  # fmt: skip
            out[key] = entry
        cost = prices.cost(r["provider"], r["model"], r["i"], r["o"], r["cr"], r["cw"])
        entry["calls"] += r["calls"]
        entry["errors"] += r["errors"]
        entry["input_tokens"] += r["i"]
        entry["output_tokens"] += r["o"]
        entry["cache_read_tokens"] += r["cr"]
        entry["cache_write_tokens"] += r["cw"]
        entry["latency_ms_total"] += r["latency"]
        if cost is None:
            entry["unpriced_calls"] += r["calls"]
        else:
            entry["cost_usd"] += cost
    result = []
    for entry in out.values():
        total_latency = entry.pop("latency_ms_total")
        entry["avg_latency_ms"] = round(total_latency / entry["calls"], 1) if entry["calls"] else 0
        entry["cost_usd"] = round(entry["cost_usd"], 6)
        result.append(entry)
    return result


def export_csv(
    db: sqlite3.Connection,
    *,
    group: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> str:
    """Every recorded call as CSV (one row per call, the table's columns)."""
    where, params = _where(group, model, since, until)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(COLUMNS)
    cols = ", ".join(COLUMNS)
    for row in db.execute(f"SELECT {cols} FROM carapace_usage{where} ORDER BY id", params):
        out.writerow(["" if v is None else v for v in row])
    return buf.getvalue().rstrip("\n")  # the CLI adds the final newline
