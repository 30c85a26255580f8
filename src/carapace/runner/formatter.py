"""Turning ``messages_in`` rows into the agent's prompt (spec §6), and time helpers.

Shape::

    <context timezone="Europe/Oslo" />
    <messages>
    <message id="4" from="family" sender="Ann" time="Feb 4, 2026, 1:30 PM">hi</message>
    ...
    </messages>

    <task from="family" time="...">Instructions:
    water the plants</task>

Deviations from NanoClaw (docs/compat.md):

* Parts follow seq order (consecutive chat rows share one ``<messages>`` part) instead of
  being regrouped by kind, so the timeline survives (W-17); rows of unknown kinds are shown
  as ``<event kind="…">`` instead of vanishing.
* Timestamps without a zone marker (SQLite ``datetime('now')``, used for tasks) are UTC,
  not local time (W-14); ``parse_zoned_to_utc`` uses ``zoneinfo`` and is DST-correct.
* Attachment paths are shown as absolute paths in the runner's view of the session folder
  (NanoClaw: ``/workspace/<localPath>``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from carapace.runner.inbound import InRow

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


CHAT_KINDS = ("chat", "chat-sdk")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_INTERNAL_RE = re.compile(r"<internal>[\s\S]*?</internal>")
_ZONED_RE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)

OriginLookup = Callable[[str | None, str | None], str | None]


def escape_xml(value: object) -> str:
    return (
        str(value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def _zone(tz: str) -> tzinfo:
    """The zone ``tz``, UTC when it is not one. UTC itself without ``zoneinfo``: a runner
    whose groups keep UTC never imports it (issue 19: runner start)."""
    if tz == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


def _is_zone(tz: str) -> bool:
    return tz == "UTC" or _zone(tz) is not UTC


def parse_timestamp(text: str) -> datetime:
    """ISO with ``Z``/offset, or SQLite ``YYYY-MM-DD HH:MM:SS`` (taken as UTC); aware UTC."""
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_time(when: datetime, tz: str) -> str:
    """en-US ``Feb 4, 2026, 1:30 PM`` in ``tz`` (spec §2.4), independent of the locale."""
    local = when.astimezone(_zone(tz))
    hour = local.hour % 12 or 12
    ampm = "AM" if local.hour < 12 else "PM"
    return f"{_MONTHS[local.month - 1]} {local.day}, {local.year}, {hour}:{local.minute:02d} {ampm}"


def format_local_time(timestamp: str, tz: str) -> str:
    try:
        return format_time(parse_timestamp(timestamp), tz)
    except (ValueError, TypeError, OverflowError):
        return "Invalid Date"


def parse_zoned_to_utc(text: str, tz: str) -> datetime:
    """A wall-clock time in ``tz`` (or an explicit ``Z``/offset time) as aware UTC.

    Raises ``ValueError`` for unparseable input. A date alone is local midnight. Uses
    ``zoneinfo``, so times near DST changes are right (NanoClaw's W-14 window is gone);
    a wall time inside a spring-forward gap is taken with its pre-gap offset (fold=0).
    """
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    if _ZONED_RE.search(s) and ("T" in s or " " in s):
        return parse_timestamp(s)
    s = s.replace(" ", "T", 1) if "T" not in s and " " in s else s
    if "T" in s:
        date_part, time_part = s.split("T", 1)
        if time_part.startswith("24"):
            time_part = "00" + time_part[2:]
        s = f"{date_part}T{time_part}"
    naive = datetime.fromisoformat(s)
    if naive.tzinfo is not None:
        return naive.astimezone(UTC)
    return naive.replace(tzinfo=_zone(tz)).astimezone(UTC)


def strip_internal_tags(text: str) -> str:
    """Remove every ``<internal>…</internal>`` and trim the ends (spec §6.10)."""
    return _INTERNAL_RE.sub("", text).strip()


def _from_attr(row: InRow, origin: OriginLookup) -> str:
    name = origin(row.channel_type, row.platform_id)
    if name is not None:
        return f' from="{escape_xml(name)}"'
    if row.channel_type is not None or row.platform_id is not None:
        unknown = f"unknown:{row.channel_type or ''}:{row.platform_id or ''}"
        return f' from="{escape_xml(unknown)}"'
    return ""


def _sender(data: dict[str, Any]) -> str:
    raw = data.get("author")
    author: dict[str, Any] = raw if isinstance(raw, dict) else {}
    for value in (data.get("sender"), author.get("fullName"), author.get("userName")):
        if value:
            return str(value)
    return "Unknown"


def _attachments(data: dict[str, Any], session_dir: Path | None) -> str:
    items = data.get("attachments")
    if not isinstance(items, list) or not items:
        return ""
    lines: list[str] = []
    for a in items:
        if not isinstance(a, dict):
            continue
        name = escape_xml(a.get("name") or a.get("filename") or "attachment")
        kind = a.get("type") or "file"
        if a.get("localPath"):
            local = str(a["localPath"])
            where = str(session_dir / local) if session_dir is not None else local
            lines.append(f"[{kind}: {name} — saved to {escape_xml(where)}]")
        elif a.get("url"):
            lines.append(f"[{kind}: {name} ({escape_xml(a['url'])})]")
        else:
            lines.append(f"[{kind}: {name}]")
    return "\n" + "\n".join(lines) if lines else ""


def format_chat(row: InRow, tz: str, origin: OriginLookup, session_dir: Path | None) -> str:
    data = row.data
    attrs = f' id="{row.seq}"' if row.seq is not None else ""
    attrs += _from_attr(row, origin)
    attrs += f' sender="{escape_xml(_sender(data))}"'
    attrs += f' time="{escape_xml(format_local_time(row.timestamp, tz))}"'
    reply = data.get("replyTo") if isinstance(data.get("replyTo"), dict) else None
    quote = ""
    if reply:
        if reply.get("id"):
            attrs += f' reply_to="{escape_xml(reply["id"])}"'
        if reply.get("sender") and reply.get("text"):
            quote = (
                f'\n  <quoted_message from="{escape_xml(reply["sender"])}">'
                f"{escape_xml(reply['text'])}</quoted_message>\n"
            )
    text = escape_xml(data.get("text") or "")
    return f"<message{attrs}>{quote}{text}{_attachments(data, session_dir)}</message>"


def format_task(row: InRow, tz: str, origin: OriginLookup) -> str:
    data = row.data
    lines: list[str] = []
    if data.get("scriptOutput"):
        lines += [
            "Script output:",
            json.dumps(data["scriptOutput"], indent=2, ensure_ascii=False),
            "",
        ]
    lines += ["Instructions:", str(data.get("prompt") or "")]
    own = data.get("timezone")
    zone_attr = ""
    if isinstance(own, str) and own != tz and _is_zone(own):
        tz, zone_attr = own, f' timezone="{escape_xml(own)}"'  # the task's own zone
    time_attr = escape_xml(format_local_time(row.timestamp, tz))
    return (
        f'<task{_from_attr(row, origin)} time="{time_attr}"{zone_attr}>'
        + "\n".join(lines)
        + "</task>"
    )


def format_webhook(row: InRow, origin: OriginLookup) -> str:
    data = row.data
    src = escape_xml(data.get("source") or "unknown")
    evt = escape_xml(data.get("event") or "unknown")
    payload = data.get("payload") or data
    body = json.dumps(payload, indent=2, ensure_ascii=False)
    return f'<webhook{_from_attr(row, origin)} source="{src}" event="{evt}">{body}</webhook>'


def format_system(row: InRow, origin: OriginLookup) -> str:
    data = row.data
    action = escape_xml(data.get("action") or "unknown")
    status = escape_xml(data.get("status") or "unknown")
    result = json.dumps(data.get("result"), separators=(",", ":"), ensure_ascii=False)
    return (
        f'<system_response{_from_attr(row, origin)} action="{action}" status="{status}">'
        f"{result}</system_response>"
    )


def format_other(row: InRow, tz: str, origin: OriginLookup) -> str:
    time_attr = escape_xml(format_local_time(row.timestamp, tz))
    return (
        f'<event kind="{escape_xml(row.kind)}"{_from_attr(row, origin)} time="{time_attr}">'
        f"{escape_xml(row.content)}</event>"
    )


def format_messages(
    rows: Sequence[InRow],
    tz: str,
    origin: OriginLookup | None = None,
    *,
    session_dir: Path | None = None,
) -> str:
    """The prompt for a batch (spec §6.1, in seq order)."""
    lookup: OriginLookup = origin or (lambda _c, _p: None)
    parts: list[str] = []
    chats: list[str] = []

    def flush() -> None:
        if len(chats) == 1:
            parts.append(chats[0])
        elif chats:
            parts.append("<messages>\n" + "\n".join(chats) + "\n</messages>")
        chats.clear()

    for row in rows:
        if row.kind in CHAT_KINDS:
            chats.append(format_chat(row, tz, lookup, session_dir))
            continue
        flush()
        if row.kind == "task":
            parts.append(format_task(row, tz, lookup))
        elif row.kind == "webhook":
            parts.append(format_webhook(row, lookup))
        elif row.kind == "system":
            parts.append(format_system(row, lookup))
        else:
            parts.append(format_other(row, tz, lookup))
    flush()
    return f'<context timezone="{escape_xml(tz)}" />\n' + "\n\n".join(parts)


def is_clear_command(row: InRow) -> bool:
    """``/clear`` as a whole word (NanoClaw's prefix test also matched ``/clearance``, W-16)."""
    if row.kind not in CHAT_KINDS:
        return False
    text = str(row.data.get("text") or "").strip().lower()
    return text == "/clear" or text.startswith(("/clear ", "/clear\n"))
