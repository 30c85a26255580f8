"""Slack's side of the Slack adapter's text: Markdown → mrkdwn, splitting, Block Kit cards.

Everything an agent writes is escaped (``&``, ``<``, ``>`` become entities), so agent text
can never ping ``<!channel>``/``<!here>``/``<@U…>`` or forge a link; the only ``<…>`` in
the output are the links this module builds from Markdown ``[text](http…)``.
"""

from __future__ import annotations

import re
from typing import Any

from carapace.channels.base import line_slices

#: Slack truncates a message's text past 40,000 characters and advises 4,000: we split there.
TEXT_LIMIT = 4_000
SECTION_LIMIT = 3_000
BUTTON_LIMIT = 75
ACTION_ID_LIMIT = 255
MAX_BUTTONS = 25

_FENCE = re.compile(r"```[^\n`]*+\n?(.*?)```", re.S)
_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\[\]\n]+)\]\(((?:https?://|mailto:)[^\s)\[\]]+)\)")
_BOLD = re.compile(
    r"\*\*(?=\S)((?:[^*]|\*(?!\*))+?)(?<=\S)\*\*|__(?=\S)((?:[^_]|_(?!_))+?)(?<=\S)__"
)
_ITALIC = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)((?:[^~]|~(?!~))+?)(?<=\S)~~")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_QUOTE = re.compile(r"^\s*>\s?")
_HOLD = "\x00{}\x00"
# (Each pattern's scan stops at the next place it could start — a link's text and address
# hold no bracket, bold no "**" — or cannot back up: an agent's line of megabytes of
# "**a " or "[" made them quadratic, minutes of CPU for one reply.)


def escape(text: str) -> str:
    """Slack's three control characters as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Markdown (as agents write it) → Slack mrkdwn, with everything else escaped."""
    held: list[str] = []

    def hold(s: str) -> str:
        held.append(s)
        return _HOLD.format(len(held) - 1)

    text = markdown.replace("\x00", "")
    text = _FENCE.sub(lambda m: hold("```" + escape(m.group(1).rstrip("\n")) + "```"), text)
    out = [_line(line, hold) for line in text.split("\n")]  # (a long line: sliced, _line)
    return _unhold("\n".join(out), held)


_HELD = re.compile("\x00([0-9]+)\x00")


def _unhold(text: str, held: list[str]) -> str:
    """Each hold marker replaced by what it holds, markers inside that too (a link inside
    bold): one pass over the text (a ``replace`` of the whole text per hold was quadratic,
    minutes for a long reply)."""

    def sub(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return _HELD.sub(sub, held[i]) if i < len(held) else m.group(0)

    return _HELD.sub(sub, text)


def _line(line: str, hold: Any) -> str:
    parts = line_slices(line)
    if len(parts) > 1:
        return _line(parts[0], hold) + "".join(_inline(p, hold) for p in parts[1:])
    prefix = ""
    if _QUOTE.match(line) and not line.lstrip().startswith(_HOLD[0]):
        line = _QUOTE.sub("", line, count=1)
        prefix = ">"
    heading = _HEADING.match(line)
    if heading:
        return prefix + "*" + _inline(heading.group(1), hold).replace("*", "") + "*"
    bullet = _BULLET.match(line)
    if bullet:
        line = bullet.group(1) + "• " + line[bullet.end() :]
    return prefix + _inline(line, hold)


def _inline(text: str, hold: Any) -> str:
    text = _CODE.sub(lambda m: hold("`" + escape(m.group(1)) + "`"), text)
    text = _LINK.sub(
        lambda m: hold("<" + escape(m.group(2)).replace("|", "%7C") + "|"
                       + escape(m.group(1)).replace("|", "¦") + ">"),
        text,
    )  # fmt: skip
    text = escape(text)
    text = _BOLD.sub(lambda m: hold("*" + (m.group(1) or m.group(2)) + "*"), text)
    text = _ITALIC.sub(lambda m: "_" + m.group(1) + "_", text)
    return _STRIKE.sub(lambda m: "~" + m.group(1) + "~", text)


def split(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """NanoClaw's rule: cut at the last blank line, else newline, else space, else hard;
    never inside an entity (``&amp;``) or a ``<link|text>``. Pieces are trimmed. Each
    piece looks at most ``limit`` characters past where the last one ended (linear in
    the text: it was quadratic, 0.6 s for 4 MiB on the event loop)."""
    chunks: list[str] = []
    pos, end = 0, len(text)
    while end - pos > limit:
        window = text[pos : pos + limit]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > 0 and _safe_cut(window, at):
                cut = at
                break
        if cut <= 0:
            cut = limit
            while cut > 1 and not _safe_cut(window, cut):
                cut -= 1
        piece = window[:cut].strip()
        if piece:
            chunks.append(piece)
        pos += cut
        if pos == cut:  # (the rest is trimmed from here on, its end too)
            end = len(text.rstrip())
        while pos < end and text[pos].isspace():
            pos += 1
    rest = text[pos:end].strip()
    if rest or not chunks:
        chunks.append(rest)
    return chunks


def _safe_cut(text: str, at: int) -> bool:
    head = text[:at]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:] and at - amp <= 6:
        return False
    lt = head.rfind("<")
    return not (lt != -1 and ">" not in head[lt:] and at - lt <= 2000)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def question_blocks(content: dict[str, Any]) -> list[dict[str, Any]] | None:
    """An ``ask_question`` as a section and buttons ``ncq:<questionId>:<index>`` (value the
    index). None when Slack could not show it (an id too long, no options): the text
    fallback with its reply code is posted instead."""
    qid = str(content.get("questionId") or "")
    options = content.get("options")
    if not qid or not isinstance(options, list) or not options:
        return None
    if len(f"ncq:{qid}:{len(options)}") > ACTION_ID_LIMIT or len(options) > MAX_BUTTONS:
        return None
    title = str(content.get("title") or "")
    question = str(content.get("question") or "")
    body = "\n".join(p for p in (f"*{escape(title)}*" if title else "", escape(question)) if p)
    buttons = []
    for i, opt in enumerate(options):
        label = opt.get("label") if isinstance(opt, dict) else opt
        buttons.append({"type": "button", "action_id": f"ncq:{qid}:{i}", "value": str(i),
                        "text": {"type": "plain_text", "emoji": True,
                                 "text": _clip(str(label or i + 1), BUTTON_LIMIT)}})  # fmt: skip
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(body or "❓", SECTION_LIMIT)}},
        {"type": "actions", "elements": buttons},
    ]


def card_blocks(card: dict[str, Any]) -> list[dict[str, Any]]:
    """NanoClaw's ``card``: title, description, children as sections; only http(s) URL
    actions become (link) buttons."""
    parts = []
    if card.get("title"):
        parts.append(f"*{escape(str(card['title']))}*")
    if card.get("description"):
        parts.append(to_mrkdwn(str(card["description"])))
    for child in card.get("children") or []:
        text = child.get("text") if isinstance(child, dict) else child
        if isinstance(text, str) and text:
            parts.append(to_mrkdwn(text))
    blocks: list[dict[str, Any]] = []
    for chunk in split("\n".join(parts), SECTION_LIMIT)[:40] if parts else []:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    buttons = []
    for i, action in enumerate(card.get("actions") or []):
        if not isinstance(action, dict):
            continue
        url, label = action.get("url"), action.get("label")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or not label:
            continue
        button: dict[str, Any] = {"type": "button", "action_id": f"link:{i}", "url": url[:3000],
                                  "text": {"type": "plain_text",
                                           "text": _clip(str(label), BUTTON_LIMIT)}}  # fmt: skip
        if action.get("style") in ("primary", "danger"):
            button["style"] = action["style"]
        buttons.append(button)
    if buttons:
        blocks.append({"type": "actions", "elements": buttons[:MAX_BUTTONS]})
    return blocks


def card_fallback(card: dict[str, Any], fallback: Any) -> str:
    if isinstance(fallback, str) and fallback:
        return fallback
    lines = [str(card.get(k)) for k in ("title", "description") if card.get(k)]
    for child in card.get("children") or []:
        text = child.get("text") if isinstance(child, dict) else child
        if isinstance(text, str):
            lines.append(text)
    return "\n".join(lines)
