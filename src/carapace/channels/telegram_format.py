"""Agent Markdown → Telegram HTML, and long text split into Telegram-sized pieces.

``to_html`` renders the Markdown agents write (``**bold**``, ``*italic*``/``_italic_``,
``~~strike~~``, ``inline code``, fenced code blocks, ``[text](https://…)`` links and ``#``
headings shown bold) and escapes everything else (``<``, ``>``, ``&``), so text from anyone
is shown as written and never becomes markup. ``split_text`` cuts at the last paragraph
break, else line break, else sentence end, else space that fits, else hard; a code fence
open at a cut is closed there and reopened in the next piece. Lengths are counted in
UTF-16 code units, as Telegram counts them.
"""

from __future__ import annotations

import html
import re

MAX_TEXT = 4096
# Markup only ever shortens the visible text, but a fence closed/reopened at a cut adds
# a few characters: keep this much headroom below Telegram's limit.
SPLIT_BUDGET = MAX_TEXT - 16


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """The longest prefix length (in characters) of ``text`` within ``limit`` UTF-16 units."""
    if utf16_len(text) <= limit:
        return len(text)
    lo, hi = 0, min(len(text), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if utf16_len(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


_SENTENCE_END = re.compile(r"[.!?…。](?:[\"')\]]*)\s")


def _cut(window: str) -> int:
    """Where to cut ``window`` (which is too long as a whole): the end of a boundary."""
    for sep in ("\n\n", "\n"):
        i = window.rfind(sep)
        if i > len(window) // 4:
            return i + len(sep)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] > len(window) // 4:
        return ends[-1]
    i = window.rfind(" ")
    if i > len(window) // 4:
        return i + 1
    return len(window)


def split_text(text: str, limit: int = SPLIT_BUDGET) -> list[str]:
    """Pieces of ``text``, each within ``limit`` UTF-16 units, cut on boundaries; joining
    them with whitespace gives back every word of ``text``. Each piece looks at most
    ``limit`` characters past where the last one ended (a reply of megabytes is split in
    linear time: it was quadratic, 4.5 s for 4 MiB on the event loop)."""
    pieces: list[str] = []
    pos, n = 0, len(text)
    reopen = ""
    while pos < n:
        if len(reopen) + n - pos <= limit:  # (a character is at least one UTF-16 unit)
            rest = reopen + text[pos:]
            if utf16_len(rest) <= limit:
                pieces.append(rest)
                break
        window = (reopen + text[pos : pos + limit])[: limit - 8]  # room to close a fence
        cut = _cut(window[: _fit(window, limit - 8)])
        piece = window[:cut]
        pos += max(1, cut - len(reopen))  # (a cut is past the reopened fence line: a
        # window holds at least limit / 2 characters, a cut is past its first quarter)
        reopen = ""
        if piece.count("```") % 2 == 1:  # a code block goes on: close it here, reopen there
            last = list(re.finditer(r"```([A-Za-z0-9_+-]*)(\n)?", piece))[-1]
            lang = last.group(1) if last.group(2) is not None else ""  # a whole-line name only
            piece = piece.rstrip("\n") + "\n```"
            reopen = f"```{lang[:32]}\n"
        piece = piece.strip("\n")
        if piece.strip():
            pieces.append(piece)
        while pos < n and text[pos] == "\n":
            pos += 1
    return [p for p in pieces if p.strip()] or ([text] if text else [])


_INLINE = re.compile(
    r"(?P<code>`[^`\n]+`)"
    r"|\[(?P<ltext>[^\[\]\n]+)\]\((?P<url>(?:https?|tg|mailto):[^)\s\[\]]+)\)"
    r"|\*\*(?P<b1>[^\n]+?)\*\*|__(?P<b2>[^\n]+?)__"
    r"|~~(?P<s>[^\n]+?)~~"
    r"|(?<![\w*])\*(?P<i1>[^*\s](?:[^*\n]*[^*\s])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<i2>[^_\s](?:[^_\n]*[^_\s])?)_(?![\w_])"
)


def _inline(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()], quote=False))
        pos = m.end()
        if m.group("code"):
            out.append(f"<code>{html.escape(m.group('code')[1:-1], quote=False)}</code>")
        elif m.group("url"):
            url = html.escape(m.group("url"), quote=True)
            out.append(f'<a href="{url}">{_inline(m.group("ltext"))}</a>')
        elif m.group("b1") or m.group("b2"):
            out.append(f"<b>{_inline(m.group('b1') or m.group('b2'))}</b>")
        elif m.group("s"):
            out.append(f"<s>{_inline(m.group('s'))}</s>")
        else:
            out.append(f"<i>{_inline(m.group('i1') or m.group('i2'))}</i>")
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


_HEADING = re.compile(r"^#{1,6}\s+(.*)$")


def to_html(markdown: str) -> str:
    """Telegram HTML for the agent's Markdown; everything that is not markup is escaped."""
    out: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```([A-Za-z0-9_+-]*)\s*$", line)  # ASCII language names
        if fence:
            lang = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end: an open fence runs to the end)
            code = html.escape("\n".join(body), quote=False)
            cls = f' class="language-{lang}"' if lang else ""
            out.append(f"<pre><code{cls}>{code}</code></pre>")
            continue
        heading = _HEADING.match(line)
        out.append(f"<b>{_inline(heading.group(1))}</b>" if heading else _inline(line))
        i += 1
    return "\n".join(out)
