"""Text for Discord: the agent's Markdown mapped to Discord's, messages split at 2000
characters, NanoClaw's Discord ids (spec/host.md §3.1, Appendix A).

Ids: a guild channel is ``discord:<guild>:<channel>``, a DM ``discord:@me:<dm channel>``, a
thread ``discord:<guild>:<parent channel>:<thread>`` (the event's ``thread_id``; its
``platform_id`` is the parent channel's), a person ``discord:<user id>``.

Markdown: Discord renders most of what agents write (bold, italics, strike, code, fences,
quotes, lists, ``#``–``###`` headings, links). What it reads differently is mapped —
``__x__`` (underline on Discord) becomes ``**x**``, deeper headings become bold lines,
images become links, tables go into a code block — and what Discord alone gives meaning to
is escaped (``||spoiler||``, ``-#`` subtext). Code is left as written. Mentions are not
escaped in the text: every message is sent with mentions disabled, so nobody is pinged.
"""

from __future__ import annotations

import re

from carapace.channels.base import line_slices
from carapace.errors import ValidationError

MAX_CHARS = 2000
PREFIX = "discord"
_FENCE = re.compile(r"^(\s*)(```|~~~)")
# a code span: a run of one to three backticks, closed by a run of the same length (a run
# of any length, backing up through it, made a line of backticks cubic: minutes)
_INLINE_CODE = re.compile(r"(?<!`)(`{1,3})(?!`)(.+?)(?<!`)\1(?!`)", re.S)


class BadDiscordId(ValidationError):
    """A platform or thread id that is not one of NanoClaw's Discord forms."""


def channel_id(guild_id: str | None, channel: str) -> str:
    return f"{PREFIX}:{guild_id or '@me'}:{channel}"


def thread_id(guild_id: str, parent: str, thread: str) -> str:
    return f"{PREFIX}:{guild_id}:{parent}:{thread}"


def target_channel(platform_id: str, thread: str | None) -> int:
    """The Discord channel to post in: the thread's when there is one."""
    for value, sizes in ((thread, (4,)), (platform_id, (3, 4))):
        if not value:
            continue
        parts = value.split(":")
        if (
            len(parts) in sizes
            and parts[0] == PREFIX
            and (parts[1] == "@me" or parts[1].isdigit())
            and all(p.isdigit() for p in parts[2:])
        ):
            return int(parts[-1])
        raise BadDiscordId(f"not a Discord id: {value!r}")
    raise BadDiscordId("no Discord channel given")


def platform_message_id(message_id: str) -> int:
    """A message id as the agent names it: the platform id, or ``<id>:<agent group>``."""
    head = message_id.split(":", 1)[0]
    if not head.isdigit():
        raise BadDiscordId(f"not a Discord message id: {message_id!r}")
    return int(head)


# ---------------------------------------------------------------------------- Markdown
def _map_prose(line: str) -> str:
    """One line outside code: Discord's own syntax escaped, the rest mapped."""
    out: list[str] = []
    pos = 0
    for m in _INLINE_CODE.finditer(line):
        out.append(_map_plain(line[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_map_plain(line[pos:]))
    return "".join(out)


def _map_plain(text: str) -> str:
    text = text.replace("||", "\\|\\|")
    text = re.sub(
        r"!\[([^\[\]]*)\]\(([^)\s\[\]]+)\)",
        lambda m: f"[{m.group(1) or 'image'}]({m.group(2)})",
        text,
    )
    text = re.sub(r"(?<![\\_])__(?=\S)((?:[^_]|_(?!_))+?)(?<=\S)__(?!_)", r"**\1**", text)
    return text


def _is_table_row(line: str) -> bool:
    s = line.strip()
    return s.startswith("|") and s.endswith("|") and s.count("|") >= 2


def to_discord(markdown: str) -> str:
    """The agent's Markdown as Discord shows it (see the module doc)."""
    lines = markdown.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    fence: str | None = None
    table: list[str] = []

    def flush_table() -> None:
        if table:
            out.extend(["```", *table, "```"])
            table.clear()

    for line in lines:
        if fence is not None:
            out.append(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        m = _FENCE.match(line)
        if m:
            flush_table()
            fence = m.group(2)
            out.append(line)
            continue
        if _is_table_row(line):
            table.append(line)
            continue
        flush_table()
        heading = re.match(r"^(#{4,6})\s+(.*)$", line)
        if heading:
            out.append(f"**{_map_prose(heading.group(2))}**")
            continue
        if line.startswith("-# "):
            line = "\\" + line
        out.append("".join(_map_prose(part) for part in line_slices(line)))
    flush_table()
    return "\n".join(out)


# ---------------------------------------------------------------------------- splitting
def split(text: str, limit: int = MAX_CHARS) -> list[str]:
    """NanoClaw's rule — cut at the last blank line, else line break, else space, else
    hard — with code fences kept whole: a chunk that ends inside a fence closes it and the
    next one reopens it with the same language. Each chunk looks at most ``limit``
    characters past where the last one ended (linear in the text: it was quadratic)."""
    chunks: list[str] = []
    text = text.strip()
    pos, n = 0, len(text)
    reopen = ""
    while pos < n:
        if len(reopen) + n - pos <= limit:
            chunks.append(reopen + text[pos:])
            break
        window = reopen + text[pos : pos + limit]
        room = limit - 4  # space to close a fence we cut through ("\n```")
        cut = -1
        for sep in ("\n\n", "\n", " "):
            cut = window.rfind(sep, 0, room)
            if cut > len(reopen):
                break
        if cut <= len(reopen):
            cut = room
        head = window[:cut].rstrip()
        pos += max(1, cut - len(reopen))
        while pos < n and text[pos].isspace():
            pos += 1
        opening = _open_fence(head)
        if opening is not None:
            head += "\n```"
            reopen = opening[:64] + "\n"  # (a longer opening line is cut: it was
            # repeated at the head of every chunk, and the chunks never got through the text)
        else:
            reopen = ""
        chunks.append(head)
    return [c for c in chunks if c.strip()]


def _open_fence(text: str) -> str | None:
    """The opening line of a fence still open at the end of ``text`` (None: all closed)."""
    opening: str | None = None
    for line in text.split("\n"):
        if line.strip().startswith("```"):
            opening = None if opening is not None else line.strip()
    return opening
