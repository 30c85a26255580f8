"""Compaction: keep the provider context under the group's limit by summarising old turns.

Before each provider call the agent measures the conversation it is about to send (the
stored conversation plus the turn so far, as compact JSON characters; the system prompt
and tool definitions are not counted). Above ``context_limit_chars`` (or above the
stored-history message cap) the stored conversation is cut at a user message — so every
assistant tool call stays next to its tool results — keeping the newest part that fits in
half the limit. The older part goes to the provider in a separate ``complete`` call (no
tools, system prompt ``SUMMARY_SYSTEM``) and comes back as a summary, which replaces it
as one ``user`` message wrapped in ``<context type="compaction">`` (the summary is cut to a
quarter of the limit, so it never fills the context by itself).

Unlike NanoClaw (spec W-3b), compaction is not a result: it writes no ``messages_out``
row, completes nothing and nudges nobody, and the context message says that everything
in it was answered and delivered already, so the model does not answer it again. If the
summary call fails, a plain excerpt of the old turns stands in for it. The runner records
each compaction in the transcript (``{"type": "compaction", …}``).
"""

from __future__ import annotations

import json
import operator

from carapace.jsonutil import dumps
from carapace.log import get_logger
from carapace.record import record
from carapace.runner.providers.base import Message, Provider

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


logger = get_logger(__name__)

COMPACTION_MARKER = "[carapace:compaction]"
SUMMARY_SYSTEM = f"""{COMPACTION_MARKER}
You write the summary that replaces the older part of a conversation between a personal
assistant and the people and systems it talks to. The assistant will continue from your
summary without seeing those messages again. Write plain text, at most about 400 words:

- who said what, in chronological order, and from which destination (the `from="…"`
  attributes of `<message>`, `<task>` and `<webhook>` elements); keep names, dates and times;
- facts learned, decisions taken, files read or changed, commands run and their outcomes;
- requests still open, with who asked.

Every request in these messages has already been answered and the answers were delivered.
Say so, and do not write a reply to any of them."""
SUMMARY_REQUEST = "Summarise this earlier part of the conversation:\n\n{transcript}"
CONTEXT_TEMPLATE = (
    '<context type="compaction" messages="{count}">\n'
    "Summary of the earlier conversation. Everything in it was handled already: each "
    "request was answered and the answers were delivered, so do not answer, repeat or "
    "re-send any of it; use it only as background for the messages that follow.\n\n"
    "{summary}\n</context>"
)
MESSAGE_CHARS = 2000  # per message in the summary request
FALLBACK_CHARS = 4000
MIN_SUMMARY_CHARS = 200


@record(frozen=True)
class Compaction:
    conversation: list[Message]  # the summary message, then the kept messages
    summary: str
    replaced: int  # messages summarised (a former summary message counts as one)
    kept: int
    before_chars: int
    after_chars: int
    fallback: bool  # the summary call failed; an excerpt stands in

    def record(self) -> dict[str, Any]:
        """The transcript line of this compaction (enough to rebuild the conversation)."""
        return {
            "type": "compaction",
            "replaced": self.replaced,
            "kept": self.kept,
            "before_chars": self.before_chars,
            "after_chars": self.after_chars,
            "fallback": self.fallback,
            "message": self.conversation[0],
        }


# what an image counts for against the context limit: about the 1,600 tokens a model
# charges for a large image (≈4 chars a token), not the length of its base64
IMAGE_CHARS = 6_400


def message_chars(message: Message) -> int:
    images = message.get("images")
    if not images:
        return len(dumps(message))
    rest = {k: v for k, v in message.items() if k != "images"}
    return len(dumps(rest)) + IMAGE_CHARS * (len(images) if isinstance(images, list) else 1)


def conversation_chars(messages: list[Message]) -> int:
    return 2 + sum(message_chars(m) + 1 for m in messages) - (1 if messages else 0)


class Encoded:
    """The compact JSON and the :func:`message_chars` of each message of a conversation,
    kept across turns (issue 19): a turn appends its messages and a bound or a compaction
    drops old ones, so only new messages are encoded, not the whole history every turn.

    Entries are keyed by the message object (identity, the object held so its id is never
    reused); a message is never changed in place once it is in a conversation (the agent
    only appends messages or replaces the list). :meth:`sync` forgets the messages that
    left the conversation. Every figure equals the full recomputation (``dumps``,
    :func:`conversation_chars`)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Message, str, int]] = {}
        # the list last synced (its message objects, in order) and the sums of their
        # ``message_chars + 1`` and JSON lengths + 1: a conversation that only grew since is
        # synced from its new messages, and its figures are had without a pass over it
        self._synced: list[Message] = []
        self._synced_chars = 0
        self._synced_len = 0

    def _entry(self, message: Message) -> tuple[Message, str, int]:
        hit = self._entries.get(id(message))
        if hit is not None and hit[0] is message:
            return hit
        entry = (message, dumps(message), message_chars(message))
        self._entries[id(message)] = entry
        return entry

    def _all(self, messages: list[Message]) -> list[tuple[Message, str, int]]:
        entries, out = self._entries, []
        for m in messages:
            hit = entries.get(id(m))
            out.append(hit if hit is not None and hit[0] is m else self._entry(m))
        return out

    def sync(self, messages: list[Message]) -> None:
        """Keep entries for exactly ``messages`` (encoding the new ones)."""
        if self._synced and _starts_with(messages, self._synced):  # it only grew
            new = self._all(messages[len(self._synced) :])
        else:
            new = self._all(messages)
            self._entries = {id(e[0]): e for e in new}
            self._synced_chars = self._synced_len = 0
        self._synced_chars += sum(e[2] + 1 for e in new)
        self._synced_len += sum(len(e[1]) + 1 for e in new)
        self._synced = list(messages)

    def _is_synced(self, messages: list[Message]) -> bool:
        """Whether ``messages`` holds exactly the messages last synced (identity, in C)."""
        return len(messages) == len(self._synced) and _starts_with(messages, self._synced)

    def json(self, message: Message) -> str:
        return self._entry(message)[1]

    def size_of(self, message: Message) -> int:
        """:func:`message_chars` of ``message`` (kept)."""
        return self._entry(message)[2]

    def known(self, message: Message) -> str | None:
        """The JSON of ``message`` when it is kept (encoded already), else None."""
        hit = self._entries.get(id(message))
        return hit[1] if hit is not None and hit[0] is message else None

    def json_len(self, messages: list[Message]) -> int:
        """``len(dumps(messages))``."""
        if self._is_synced(messages):
            total = self._synced_len
        else:
            total = sum(len(e[1]) + 1 for e in self._all(messages))
        return 1 + total + (0 if messages else 1)

    def chars(self, messages: list[Message]) -> int:
        """:func:`conversation_chars` of ``messages``."""
        if self._is_synced(messages):
            total = self._synced_chars  # the list last synced: known
        else:
            total = sum(e[2] + 1 for e in self._all(messages))
        return 1 + total + (0 if messages else 1)


def _starts_with(messages: list[Message], head: list[Message]) -> bool:
    """Whether ``messages`` begins with the very objects of ``head`` (identity, in C)."""
    return len(messages) >= len(head) and all(map(operator.is_, messages, head))


def is_summary(message: Message) -> bool:
    return message.get("role") == "user" and bool(message.get("compaction"))


def split_point(messages: list[Message], keep_chars: int, keep_messages: int | None = None,
                size_of: Callable[[Message], int] = message_chars) -> int:  # fmt: skip
    """The index of the oldest user message whose tail fits in ``keep_chars`` (and
    ``keep_messages``); ``len(messages)`` when none does: everything is summarised.
    ``size_of``: :func:`message_chars`, or the same figure kept (:meth:`Encoded.size_of`)."""
    size = 2  # "[]"
    best = len(messages)
    for i in range(len(messages) - 1, -1, -1):
        size += size_of(messages[i]) + 1
        if size > keep_chars or (keep_messages is not None and len(messages) - i > keep_messages):
            break
        if messages[i].get("role") == "user" and not is_summary(messages[i]):
            best = i
    return best


def render(messages: list[Message], max_chars: int) -> str:
    """The old turns as readable text for the summariser, newest kept when too long."""
    lines: list[str] = []
    for m in messages:
        role = m.get("role")
        content = _cut(_text(m.get("content")))
        if role == "user":
            lines.append(f"[{'earlier summary' if is_summary(m) else 'incoming'}] {content}")
        elif role == "assistant":
            calls = "; ".join(
                f"{c.get('name')}({_cut(json.dumps(c.get('arguments'), ensure_ascii=False), 300)})"
                for c in m.get("tool_calls") or ()
            )
            text = f"[assistant] {content}" if content else "[assistant]"
            lines.append(f"{text} [tool calls: {calls}]" if calls else text)
        elif role == "tool":
            flag = " (error)" if m.get("is_error") else ""
            lines.append(f"[tool result {m.get('name')}{flag}] {content}")
    text = "\n\n".join(lines)
    if len(text) > max_chars:
        text = "[… older part omitted …]\n" + text[-max_chars:]
    return text


def compact(
    provider: Provider,
    conversation: list[Message],
    *,
    limit_chars: int,
    pending_chars: int = 0,
    keep_messages: int | None = None,
    encoded: Encoded | None = None,
) -> Compaction | None:
    """Summarise the older part of ``conversation``; None when nothing can be cut.

    ``pending_chars`` is the size of the turn in progress, which must fit next to the kept
    messages; ``keep_messages`` caps how many messages are kept. ``encoded``: the agent's
    kept sizes of its messages (the same figures, without encoding the whole conversation
    again: three passes of ``dumps`` over it were ~5 ms a compaction at 100 messages).
    """
    sizes = encoded if encoded is not None else Encoded()
    before = sizes.chars(conversation)
    keep_chars = max(0, limit_chars // 2 - pending_chars)
    cut = split_point(conversation, keep_chars, keep_messages, sizes.size_of)
    if cut == 0 or (cut == 1 and is_summary(conversation[0])):
        return None
    old, kept = conversation[:cut], conversation[cut:]
    transcript = render(old, max(limit_chars, MESSAGE_CHARS))
    fallback = False
    try:
        turn = provider.complete(
            SUMMARY_SYSTEM,
            [{"role": "user", "content": SUMMARY_REQUEST.format(transcript=transcript)}],
            [],
        )
        summary = turn.text.strip()
    except Exception as exc:  # any provider failure: the turn must still go ahead
        logger.warning("compaction summary failed (%s); using an excerpt", exc)
        summary = ""
    cap = max(MIN_SUMMARY_CHARS, limit_chars // 4)  # so the summary never fills the context
    if not summary:
        fallback = True
        excerpt = transcript[-min(FALLBACK_CHARS, cap) :]
        summary = f"(No summary could be made; the end of the earlier conversation follows.)\n\n…{excerpt}"
    elif len(summary) > cap:
        summary = summary[:cap] + " […]"
    message: Message = {
        "role": "user",
        "content": CONTEXT_TEMPLATE.format(count=len(old), summary=summary),
        "compaction": True,
    }
    new = [message, *kept]
    result = Compaction(
        conversation=new,
        summary=summary,
        replaced=len(old),
        kept=len(kept),
        before_chars=before,
        after_chars=sizes.chars(new),
        fallback=fallback,
    )
    logger.info(
        "compacted the conversation: %d message(s) summarised, %d kept, %d -> %d chars",
        result.replaced,
        result.kept,
        before,
        result.after_chars,
    )
    return result


def mock_summary(messages: list[Message]) -> str:
    """The mock provider's deterministic summary: the first line of each old turn."""
    request = _text(messages[-1].get("content")) if messages else ""
    body = request.split("\n\n", 1)[1] if "\n\n" in request else request
    firsts = [line[:60] for line in body.split("\n\n") if line.strip()]
    return "Mock summary of the earlier conversation:\n" + "\n".join(f"- {f}" for f in firsts)


def _text(content: object) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " […]"
