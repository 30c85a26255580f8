"""Human output of admin responses: tables for row lists, ``key: value`` for one row."""

from __future__ import annotations

import json
from typing import Any

MAX_CELL = 60


def _cell(value: Any) -> str:
    text = _scalar(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    return text


def table(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def human(data: Any) -> str:
    """Arrays of objects as a padded table, strings verbatim, objects as ``key: value``."""
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        if not data:
            return "(none)"
        if all(isinstance(r, dict) for r in data):
            return table(data)
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        lines = []
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                text = json.dumps(value, ensure_ascii=False, indent=2)
                lines.append(f"{key}:".ljust(width + 2) + text.replace("\n", "\n  "))
            else:
                lines.append(f"{key}:".ljust(width + 2) + _scalar(value))
        return "\n".join(lines)
    return json.dumps(data, ensure_ascii=False, indent=2)
