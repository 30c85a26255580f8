"""Budgets: per agent group, with a global default (scope ``*``), in ``carapace_budgets``.

Each scope may set daily and monthly limits in tokens and/or US dollars (estimated with
the price table), and ``warn_share`` (default 0.8). A group's unset fields fall back to
the ``*`` row's. Days and months are UTC. ``reset_at`` (set by ``carapace admin budgets
reset``) makes calls before it not count for the group.

``check`` says which limit is reached (the proxy then refuses the call) and which crossed
the warning share (the host tells the group's owner/admins once per period).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from carapace.errors import ValidationError
from carapace.proxy.usage import UsageStore, period_start
from carapace.timefmt import iso

DEFAULT_SCOPE = "*"
DEFAULT_WARN_SHARE = 0.8
LIMIT_FIELDS = ("daily_tokens", "monthly_tokens", "daily_usd", "monthly_usd")


@dataclass(frozen=True)
class Budget:
    scope: str
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_usd: float | None = None
    monthly_usd: float | None = None
    warn_share: float | None = None
    reset_at: str | None = None

    def merged(self, default: Budget | None) -> Budget:
        if default is None:
            return self
        values = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None
            else getattr(default, f.name)
            for f in fields(self)
            if f.name not in ("scope", "reset_at")
        }  # fmt: skip
        return Budget(scope=self.scope, reset_at=self.reset_at, **values)

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in LIMIT_FIELDS)


def _row(row: sqlite3.Row | None) -> Budget | None:
    if row is None:
        return None
    return Budget(**{f.name: row[f.name] for f in fields(Budget)})


def get_budget(db: sqlite3.Connection, scope: str) -> Budget | None:
    return _row(db.execute("SELECT * FROM carapace_budgets WHERE scope=?", (scope,)).fetchone())


def effective_budget(db: sqlite3.Connection, group: str) -> Budget:
    own = get_budget(db, group) or Budget(scope=group)
    return own.merged(get_budget(db, DEFAULT_SCOPE))


def list_budgets(db: sqlite3.Connection) -> list[Budget]:
    rows = db.execute("SELECT * FROM carapace_budgets ORDER BY scope").fetchall()
    return [b for b in (_row(r) for r in rows) if b is not None]


def set_budget(db: sqlite3.Connection, scope: str, values: dict[str, Any], now: datetime) -> Budget:
    """Set the given limit fields (a value of ``None`` or a negative number clears one)."""
    unknown = set(values) - {*LIMIT_FIELDS, "warn_share"}
    if unknown:
        raise ValidationError(f"unknown budget field(s): {', '.join(sorted(unknown))}")
    share = values.get("warn_share")
    if share is not None and not 0 < float(share) <= 1:
        raise ValidationError("warn share must be a number in (0, 1], e.g. 0.8")
    current = get_budget(db, scope) or Budget(scope=scope)
    merged = {f.name: getattr(current, f.name) for f in fields(Budget)}
    for key, value in values.items():
        merged[key] = None if value is None or float(value) < 0 else value
    db.execute(
        "INSERT INTO carapace_budgets (scope, daily_tokens, monthly_tokens, daily_usd,"
        " monthly_usd, warn_share, reset_at, updated_at) VALUES (?,?,?,?,?,?,?,?)"
        " ON CONFLICT(scope) DO UPDATE SET daily_tokens=excluded.daily_tokens,"
        " monthly_tokens=excluded.monthly_tokens, daily_usd=excluded.daily_usd,"
        " monthly_usd=excluded.monthly_usd, warn_share=excluded.warn_share,"
        " updated_at=excluded.updated_at",
        (scope, merged["daily_tokens"], merged["monthly_tokens"], merged["daily_usd"],
         merged["monthly_usd"], merged["warn_share"], merged["reset_at"], iso(now)),
    )  # fmt: skip
    found = get_budget(db, scope)
    assert found is not None
    return found


def reset_budget(db: sqlite3.Connection, scope: str, now: datetime) -> Budget:
    """From ``now`` on, earlier calls do not count against ``scope``'s limits."""
    set_budget(db, scope, {}, now)
    db.execute(
        "UPDATE carapace_budgets SET reset_at=?, updated_at=? WHERE scope=?",
        (iso(now), iso(now), scope),
    )
    found = get_budget(db, scope)
    assert found is not None
    return found


def delete_budget(db: sqlite3.Connection, scope: str) -> bool:
    return db.execute("DELETE FROM carapace_budgets WHERE scope=?", (scope,)).rowcount > 0


@dataclass(frozen=True)
class Standing:
    """One limit: how much of it is used."""

    name: str  # daily_tokens ...
    used: float
    limit: float
    period_key: str  # 2026-12-04 / 2026-12

    @property
    def share(self) -> float:
        return self.used / self.limit if self.limit > 0 else 1.0

    def describe(self) -> str:
        period = "daily" if self.name.startswith("daily") else "monthly"
        if self.name.endswith("usd"):
            return f"{period} limit ${self.limit:.2f} (used ${self.used:.2f})"
        return f"{period} limit {int(self.limit):,} tokens (used {int(self.used):,})"


def standings(budget: Budget, usage: UsageStore, group: str, now: datetime) -> list[Standing]:
    out: list[Standing] = []
    for name in LIMIT_FIELDS:
        limit = getattr(budget, name)
        if limit is None:
            continue
        period = "day" if name.startswith("daily") else "month"
        since = period_start(period, now)
        if budget.reset_at and budget.reset_at > since:
            since = budget.reset_at
        tokens, dollars = usage.used(group, since)
        used = dollars if name.endswith("usd") else tokens
        key = now.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")
        out.append(Standing(name, float(used), float(limit), key))
    return out


def refusal_text(group_name: str, group: str, reached: Standing) -> str:
    flag = reached.name.replace("_", "-")
    return (
        f"budget for {group_name} reached: {reached.describe()}; an admin can raise it with "
        f"`carapace admin budgets set --scope {group} --{flag} N` or reset it with "
        f"`carapace admin budgets reset --scope {group}`"
    )
