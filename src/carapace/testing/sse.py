"""One server-sent event, as both fake model APIs stream them."""

from __future__ import annotations

import json
from typing import Any


def sse(event: str | None, data: Any) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"
