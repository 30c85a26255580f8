"""Choosing the next batch from the due pending rows (a pure function; spec §5.1-5.2, fixed).

Input: every due pending row in seq order and the ids this runner has already acknowledged.

* Acknowledged rows are dropped *before* the batch limit (W-5), so nothing hides an older row.
* ``on_wake`` rows are visible on the first poll, and afterwards only those seen then
  (NanoClaw lost the ones outside its first window).
* Answers to questions and CLI requests (``system`` rows of type ``question_response`` /
  ``cli_response``) reaching the loop are late: they are acked, never prompted
  (host §11.1 item 3).
* Nothing happens unless some row has ``trigger=1`` (the accumulate gate, applied to the
  whole queue rather than a window, W-4). The batch answers the *first* triggering row: its
  routing is the origin. It holds up to ``limit`` rows: context rows (``trigger=0``) just
  before it, then it, then later rows that are context or come from the same origin. Older
  context rows that do not fit are *aged out* (acked, not shown). Triggering rows from other
  conversations stay pending for the next batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from carapace.record import field, record
from carapace.runner.inbound import InRow

LATE_SYSTEM_TYPES = ("question_response", "cli_response")


@record
class Selection:
    batch: list[InRow] = field(default_factory=list)
    late: list[InRow] = field(default_factory=list)  # ack completed, not shown
    aged: list[InRow] = field(default_factory=list)  # ack completed, not shown
    trigger: InRow | None = None


def _origin_key(row: InRow) -> tuple[str | None, str | None, str | None]:
    return (row.channel_type, row.platform_id, row.thread_id)


def is_late_system(row: InRow) -> bool:
    return row.kind == "system" and row.data.get("type") in LATE_SYSTEM_TYPES


def select_batch(
    rows: Iterable[InRow],
    acked: set[str],
    *,
    limit: int,
    on_wake_visible: set[str] | None,
) -> Selection:
    """``on_wake_visible`` None means "first poll": every on_wake row is visible."""
    sel = Selection()
    candidates: list[InRow] = []
    for row in rows:
        if row.id in acked:
            continue
        if row.on_wake and on_wake_visible is not None and row.id not in on_wake_visible:
            continue
        if is_late_system(row):
            sel.late.append(row)
            continue
        candidates.append(row)
    first = next((i for i, r in enumerate(candidates) if r.trigger), None)
    if first is None:
        return sel
    limit = max(1, limit)
    trigger = candidates[first]
    sel.trigger = trigger
    before = candidates[:first]  # all trigger=0
    keep_before = before[len(before) - (limit - 1) :] if limit > 1 else []
    sel.aged = before[: len(before) - len(keep_before)]
    batch = [*keep_before, trigger]
    key = _origin_key(trigger)
    for row in candidates[first + 1 :]:
        if len(batch) >= limit:
            break
        if not row.trigger or _origin_key(row) == key:
            batch.append(row)
    sel.batch = batch
    return sel
