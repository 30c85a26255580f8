"""Retrying rate-limited and failing upstream calls: bounded, honouring ``retry-after``."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime

from carapace.proxy.http11 import Head

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class RetryPolicy:
    max_tries: int = 4  # the first try and up to three retries
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0  # one wait; a longer retry-after ends the retries
    max_total_s: float = 60.0  # all waits together

    def backoff(self, attempt: int) -> float:
        """The wait after failed try number ``attempt`` (0-based) with no retry-after."""
        return float(min(self.max_delay_s, self.base_delay_s * (2**attempt)))


def retry_after(head: Head, now: datetime) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, ``retry-after`` as seconds or
    an HTTP date), or None."""
    raw_ms = head.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = head.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())
