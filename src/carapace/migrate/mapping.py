"""Pure v1 → carapace mappings: JIDs, triggers, folders and schedules (spec/v1-migration.md §3).

Nothing here reads files or the clock; every time-dependent function takes ``now``.
Where carapace knowingly differs from NanoClaw's own migration the docstring says so
(the full list is ``docs/compat-migration.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from carapace.channels.registry import available_channels
from carapace.timefmt import iso, parse_ts

#: Channel types a carapace adapter exists for (``channels/registry.py``); others import but
#: stay inert.
KNOWN_CHANNELS = available_channels()

_WHATSAPP_HOSTS = {"s.whatsapp.net", "g.us", "lid", "broadcast", "newsletter"}
_ALIASES = {
    "dc": "discord", "discord": "discord", "tg": "telegram", "telegram": "telegram",
    "wa": "whatsapp", "whatsapp": "whatsapp", "slack": "slack", "mx": "matrix",
    "matrix": "matrix", "teams": "teams", "im": "imessage", "imessage": "imessage",
    "email": "email", "webex": "webex", "gchat": "gchat", "linear": "linear",
    "github": "github",
}  # fmt: skip
_V1_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_REGEX_META = set("\\^$.|?*+()[]{}/")


@dataclass(frozen=True)
class Chat:
    """Where a v1 JID lands: a messaging group key."""

    channel_type: str
    platform_id: str
    is_group: bool


class JidError(ValueError):
    """A JID carapace will not guess a messaging group for."""


def map_jid(raw: str) -> Chat:
    """NanoClaw's ``parseJid`` + ``v2PlatformId`` + ``inferIsGroup`` (spec §3.2).

    Deviations: Discord JIDs raise (v1 never stored the guild id that v2 platform ids need,
    and carapace does not call the Discord API); ``is_group`` is 0 for Slack ``D…`` DMs and
    for upper-case WhatsApp hosts (NanoClaw said 1 / 0).
    """
    text = raw.strip()
    if "@" in text:
        host = text.rsplit("@", 1)[1].lower()
        if host in _WHATSAPP_HOSTS:
            return Chat("whatsapp", text, host == "g.us")
    if ":" not in text:
        raise JidError(f"cannot parse JID {raw!r} (no channel prefix, not WhatsApp)")
    prefix, rest = text.split(":", 1)
    prefix = prefix.lower()
    if not prefix or not rest:
        raise JidError(f"cannot parse JID {raw!r} (empty prefix or id)")
    channel = _ALIASES.get(prefix, prefix)
    if channel == "discord":
        raise JidError(
            f"Discord JID {raw!r}: v1 did not store the server (guild) id that a v2 "
            "platform id needs; wire this group by hand once a Discord adapter exists"
        )
    if channel == "whatsapp":
        return Chat("whatsapp", rest, rest.lower().endswith("@g.us"))
    if rest.lower().startswith(f"{channel}:"):
        rest = rest[len(channel) + 1 :]
    platform_id = f"{channel}:{rest}"
    if channel == "telegram":
        return Chat(channel, platform_id, rest.startswith("-"))
    if channel == "slack":
        return Chat(channel, platform_id, not rest.startswith("D"))
    return Chat(channel, platform_id, True)


def folder_problem(folder: str) -> str | None:
    """Why v1 itself would refuse this folder (``isValidGroupFolder``), or None."""
    if folder != folder.strip():
        return "has surrounding whitespace"
    if not _V1_FOLDER.match(folder):
        return "must be 1-64 letters, digits, '_' or '-', starting with a letter or digit"
    if folder.lower() == "global":
        return "'global' is reserved"
    return None


def js_escape(text: str) -> str:
    """Escape regex metacharacters the same way for JavaScript and Python."""
    return "".join(f"\\{c}" if c in _REGEX_META else c for c in text)


@dataclass(frozen=True)
class Engage:
    mode: str
    pattern: str | None
    ignored_message_policy: str
    notes: tuple[str, ...] = ()


def map_engage(trigger: str | None, requires_trigger: object, is_main: object) -> Engage:
    """v1 trigger settings → wiring engage columns (spec §3.2 ``triggerToEngage``).

    Deviations: a main group (``is_main=1``) never needs a trigger, as in v1 (§3.14 #2);
    a trigger with regex metacharacters is escaped so it still matches literally (§3.14 #1);
    the trigger is trimmed as v1 did; gated wirings accumulate non-trigger messages as
    context, as v1 fed them to the agent (§3.14 #3).
    """
    text = (trigger or "").strip() or None
    requires = requires_trigger != 0
    notes: list[str] = []
    if is_main == 1 and requires and text not in (".", ".*"):
        notes.append("main group: answers every message, as in v1 (NanoClaw would gate it)")
        requires = False
    if text in (".", ".*") or not requires:
        return Engage("pattern", ".", "drop", tuple(notes))
    if text is None:
        return Engage("mention", None, "accumulate", tuple(notes))
    pattern = js_escape(text)
    if pattern != text:
        notes.append(f"trigger {text!r} escaped to {pattern!r} so it matches literally")
    notes.append(
        f"v1 matched {text!r} only at the start of a message, ignoring case; "
        "the wiring matches it anywhere, case-sensitively"
    )
    return Engage("pattern", pattern, "accumulate", tuple(notes))


# ---------------------------------------------------------------- schedules

_SUFFIX = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(value: str) -> int | None:
    """A v1 interval (milliseconds, or a fork's ``<n><s|m|h|d>``) in whole seconds (≥ 1)."""
    v = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", v)
    if m:
        secs = float(m.group(1)) * _SUFFIX[m.group(2)]
    elif re.fullmatch(r"\d+", v):
        secs = int(v) / 1000
    else:
        return None
    whole = round(secs)
    return whole if whole >= 1 else None


def interval_to_recurrence(seconds: int, anchor: datetime, tz: str) -> str:
    """An exact cron when the interval has one, else ``@every <N>s`` (carapace extension).

    The phase is taken from ``anchor`` (v1's ``next_run``) in ``tz``: every 15 minutes
    anchored at 10:05 becomes ``5/15 * * * *``.
    """
    local = anchor.astimezone(ZoneInfo(tz))
    mi, hh = local.minute, local.hour
    if seconds % 60 == 0:
        minutes = seconds // 60
        if minutes < 60 and 60 % minutes == 0:
            if minutes == 1:
                return "* * * * *"
            off = mi % minutes
            return f"{'*' if off == 0 else off}/{minutes} * * * *"
        if minutes % 60 == 0:
            hours = minutes // 60
            if hours < 24 and 24 % hours == 0:
                if hours == 1:
                    return f"{mi} * * * *"
                off = hh % hours
                return f"{mi} {'*' if off == 0 else off}/{hours} * * *"
            if hours == 24:
                return f"{mi} {hh} * * *"
            if hours == 24 * 7:
                return f"{mi} {hh} * * {(local.isoweekday() % 7)}"
    return f"@every {seconds}s"


@dataclass(frozen=True)
class Schedule:
    """What a v1 task becomes: ``status`` of the row, first fire, recurrence, and notes."""

    status: str  # 'pending' | 'paused' | 'completed'
    process_after: str
    recurrence: str | None
    notes: tuple[str, ...] = ()
    needs_person: str | None = None


def _cron_problem(expr: str) -> str | None:
    from carapace.sched.cron import validate_cron

    try:
        validate_cron(expr)
    except Exception as exc:  # ValidationError, or anything the parser raises
        return str(exc)
    return None


def _local_to_utc(value: str, tz: str) -> str | None:
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return iso(dt)


def map_schedule(
    schedule_type: str,
    schedule_value: str,
    next_run: str | None,
    status: str | None,
    last_run: str | None,
    *,
    v1_tz: str,
    tz: str,
    now: datetime,
) -> Schedule:
    """v1 ``scheduled_tasks`` → a ``messages_in`` task row's schedule columns.

    Active tasks become ``pending``, paused ones ``paused`` (their recurrence kept so a resume
    continues the series), completed ones ``completed`` with no recurrence. A task carapace
    cannot schedule correctly is kept ``paused`` with ``needs_person`` saying why.
    """
    v1_status = (status or "active").strip()
    kind = (schedule_type or "").strip()
    notes: list[str] = []
    problem: str | None = None
    first: str | None = None
    recurrence: str | None = None
    if next_run:
        try:
            first = iso(parse_ts(next_run))
        except ValueError:
            notes.append(f"next_run {next_run!r} unreadable; recomputed")
    if kind == "cron":
        expr = schedule_value.strip()
        problem = _cron_problem(expr)
        if problem is None:
            recurrence = expr
            if first is None:
                from carapace.sched.cron import next_after

                first = iso(next_after(expr, tz, now))
            if v1_tz != tz:
                notes.append(f"cron ran in {v1_tz} under v1; carapace uses {tz}")
        else:
            recurrence = expr
            problem = f"invalid cron {expr!r}: {problem}"
    elif kind == "interval":
        secs = interval_seconds(schedule_value)
        if secs is None:
            problem = f"interval {schedule_value!r} is not a positive duration"
        else:
            anchor = parse_ts(first) if first else now
            recurrence = interval_to_recurrence(secs, anchor, tz)
            first = first or iso(now)
            if recurrence.startswith("@every"):
                notes.append(f"interval of {secs}s has no exact cron; stored as {recurrence!r}")
            else:
                notes.append(f"interval of {secs}s converted to cron {recurrence!r}")
    elif kind in ("once", "at"):
        if first is None:
            first = _local_to_utc(schedule_value, v1_tz)
            if first is None:
                problem = f"once-task time {schedule_value!r} is not a date"
            else:
                notes.append(f"{schedule_value!r} read as local time in {v1_tz}")
    else:
        problem = f"unknown schedule_type {kind!r}"
    if v1_status == "completed":
        done = _local_to_utc(last_run, "UTC") if last_run else None
        return Schedule("completed", done or first or iso(now), None, tuple(notes))
    if problem is not None:
        return Schedule("paused", first or iso(now), recurrence, tuple(notes), problem)
    assert first is not None
    if v1_status == "paused":
        return Schedule("paused", first, recurrence, tuple(notes))
    if v1_status != "active":
        why = f"unknown v1 status {v1_status!r}; kept paused"
        return Schedule("paused", first, recurrence, tuple(notes), why)
    return Schedule("pending", first, recurrence, tuple(notes))
