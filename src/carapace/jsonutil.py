"""JSON as JavaScript writes it: compact separators, no ASCII escaping (DESIGN §1 invariant 7)."""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads_or(text: str | None, default: Any) -> Any:
    """Parse JSON, returning ``default`` for NULL or malformed text (nested too deep too)."""
    if text is None:
        return default
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return default
