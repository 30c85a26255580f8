"""Agent-supplied text in cards (docs/sandbox.md, "Approval cards"): quoted, bounded,
marked as the agent's words, so nothing an agent writes can pose as the host's text."""

from __future__ import annotations

from carapace.jsonutil import dumps

AGENT_VALUE_CHARS = 400
CARD_TEXT_CHARS = 3000
CARD_TEXT_LINES = 30
AGENT_MARK = "(between «» as the agent wrote it; unverified)"
_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_CONTROL.update({0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"})
# invisible or direction-changing characters that could disguise what an approver reads
_INVISIBLE = {c: f"\\u{c:04x}" for c in (*range(0x200B, 0x2010), *range(0x202A, 0x202F),
                                        *range(0x2060, 0x2070), 0xFEFF, 0x00AD)}  # fmt: skip


def quote_agent(value: object, limit: int = AGENT_VALUE_CHARS) -> str:
    """An agent-supplied value as one visibly quoted line: ``«…»``, newlines and control
    characters escaped (``\\n``, ``\\x1b``), bounded to ``limit`` characters with the
    total length said. Nothing the agent writes can start a line of the card."""
    text = value if isinstance(value, str) else dumps(value)
    text = text.translate(_CONTROL).translate(_INVISIBLE).replace("«", "‹").replace("»", "›")
    if len(text) > limit:
        text = f"{text[:limit]}… [cut: {len(text)} characters in all]"
    return f"«{text}»"


def bound_card_text(
    text: str, *, chars: int = CARD_TEXT_CHARS, lines: int = CARD_TEXT_LINES
) -> str:
    """The safety net for any card text: control characters escaped, no run of blank lines,
    at most ``lines`` lines and ``chars`` characters (what was cut is said)."""
    keep = {0x0A: "\n"}
    table = {k: v for k, v in _CONTROL.items() if k not in keep}
    out: list[str] = []
    for line in text.translate(table).translate(_INVISIBLE).split("\n"):
        if not line.strip() and (not out or not out[-1].strip()):
            continue
        out.append(line.rstrip())
    while out and not out[-1].strip():
        out.pop()
    cut = len(out) - lines
    if cut > 0:
        out = [*out[:lines], f"[… {cut} more line(s) cut]"]
    joined = "\n".join(out)
    if len(joined) > chars:
        joined = f"{joined[:chars]}… [cut: {len(joined)} characters in all]"
    return joined
