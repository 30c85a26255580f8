"""The agent: the tool loop around a provider, and the conversation it keeps.

One turn: append the formatted batch as a user message, call ``provider.complete``, run
the tool calls it asks for, append the results, and repeat until a turn has no tool calls
(at most ``max_tool_rounds`` rounds). The heartbeat is touched around every provider call
and tool call.

The conversation is provider-neutral (``providers/base.py``) and persisted in
``session_state``, one row per message (``conversation_store.py``; bounded to the last
``history_messages`` messages, cut at a user message), so a restarted runner resumes it;
the full transcript is appended to ``<session_dir>/conversations/<session_id>.jsonl`` (per session: never in the
group folder that other sessions' agents can read). A turn's messages are only
kept when the turn succeeded; a failed or abandoned turn leaves the conversation as it was.

Before each provider call the conversation is compacted when it outgrows the group's
context limit (``compaction.py``); a restarted runner resumes from ``session_state``, or
rebuilds the conversation from the transcript when the state is missing (``transcript.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from carapace.db.connection import transaction
from carapace.jsonutil import dumps
from carapace.log import get_logger
from carapace.record import record
from carapace.runner.compaction import (
    Compaction,
    Encoded,
    compact,
    conversation_chars,
    is_summary,
)
from carapace.runner.conversation_store import ConversationStore
from carapace.runner.images import Image, describe
from carapace.runner.outbound import Outbound
from carapace.runner.providers.base import Message, Provider
from carapace.runner.tools import ToolBox, TurnAbandoned
from carapace.runner.transcript import rebuild_conversation, transcript_path
from carapace.timefmt import iso, utcnow

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


logger = get_logger(__name__)

MAX_STATE_CHARS = 500_000
ROUNDS_NOTE = "(I stopped after {n} rounds of tool calls without finishing.)"
MAX_CONTINUATIONS = 3
CONTINUE_PROMPT = (
    "(Your last reply was cut off by the output token limit. Continue exactly where it "
    "stopped, without repeating anything.)"
)
CUT_NOTE = "(This reply is incomplete: the model hit its output token limit {n} times.)"
CUT_CALLS_NOTE = "(tool calls cut off by the output token limit were not run)"


@record(frozen=True)
class TurnResult:
    text: str
    messages: list[Message]  # the turn's new messages, user prompt first
    rounds: int


def resume_conversation(
    outbound: Outbound,
    session_dir: Path,
    session_id: str,
    max_messages: int,
    agent_dir: Path | None = None,
    store: ConversationStore | None = None,
) -> list[Message]:
    """The conversation to continue after a restart: ``session_state``, else the transcript
    (a legacy one in ``agent_dir`` when the session has none). ``store``: the runner's,
    which then knows what is stored (its next save writes only what changed)."""
    stored = (store or ConversationStore()).load(outbound.conn)
    if stored is not None:
        return stored
    rebuilt = rebuild_conversation(session_dir, session_id, agent_dir)
    if not rebuilt:
        return []
    logger.info("conversation rebuilt from the transcript (%d messages)", len(rebuilt))
    return bound_conversation(rebuilt, max_messages)


def bound_conversation(
    messages: list[Message], max_messages: int, encoded: Encoded | None = None
) -> list[Message]:
    """The newest messages, at most ``max_messages`` and ``MAX_STATE_CHARS``, starting at a
    user message (never with a dangling tool result). ``encoded``: the messages' kept JSON
    (the agent's), so only new messages are encoded."""
    enc = encoded or Encoded()
    out = messages[-max_messages:] if max_messages > 0 else []
    start, size = 0, enc.json_len(out)  # len(dumps(out[start:]))

    def drop() -> int:
        return size - len(enc.json(out[start])) - 1 if len(out) - start > 1 else 2

    while start < len(out) and (out[start].get("role") != "user" or size > MAX_STATE_CHARS):
        size, start = drop(), start + 1
        while start < len(out) and out[start].get("role") != "user":
            size, start = drop(), start + 1
    out = out[start:]
    if messages and out and is_summary(messages[0]) and out[0] is not messages[0]:
        with_summary = [messages[0], *out]
        with_size = size + len(enc.json(messages[0])) + 1
        if len(with_summary) <= max_messages and with_size <= MAX_STATE_CHARS:
            out = with_summary  # the compaction summary outlives the messages it precedes
    return out


class Agent:
    def __init__(
        self,
        provider: Provider,
        toolbox: ToolBox,
        *,
        max_tool_rounds: int,
        heartbeat: Callable[[], None],
        should_stop: Callable[[], bool],
        conversation: list[Message] | None = None,
        context_limit_chars: int | None = None,
        history_messages: int | None = None,
        on_compaction: Callable[[Compaction], None] | None = None,
    ) -> None:
        self.provider = provider
        self.toolbox = toolbox
        self.max_tool_rounds = max_tool_rounds
        self.heartbeat = heartbeat
        self.should_stop = should_stop
        self.conversation: list[Message] = list(conversation or [])
        self.context_limit_chars = context_limit_chars
        self.history_messages = history_messages
        self.on_compaction = on_compaction
        # the conversation's messages as JSON and sizes, reused across turns (issue 19)
        self.encoded = Encoded()
        # set for a turn whose reply is shown as it is written (runner/preview.py): gets
        # the round's text so far from a provider that streams (``complete_stream``)
        self.on_text: Callable[[str], None] | None = None

    def run_turn(self, system: str, prompt: str, images: Sequence[Image] = ()) -> TurnResult:
        """Run one turn; raises ``ProviderError`` (or any provider failure) and
        ``TurnAbandoned``, leaving ``self.conversation`` untouched in both cases.

        ``images`` (a person's, ``images.py``) go with the prompt to a provider whose model
        takes images, else are described in its text; the returned messages keep the text
        only (the bytes are not stored in the conversation)."""
        user: Message = {"role": "user", "content": prompt}
        takes_images = bool(getattr(self.provider, "takes_images", False))
        if images and takes_images:
            user["images"] = [i.block() for i in images]
        elif images:
            user["content"] = f"{prompt}\n\n{describe(images)}"
        result = self._run_turn(system, user)
        if "images" in user:
            kept = {k: v for k, v in user.items() if k != "images"}
            result = TurnResult(result.text, [kept, *result.messages[1:]], result.rounds)
        return result

    def _run_turn(self, system: str, user: Message) -> TurnResult:
        new: list[Message] = [user]
        whole_turn = getattr(self.provider, "run_agent_turn", None)
        if whole_turn is not None:  # the provider runs the tool loop itself (claude_sdk.py)
            if self.should_stop():
                raise TurnAbandoned("shutdown before the provider call")
            self.heartbeat()
            streamed = {"on_text": self.on_text} if self.on_text is not None else {}
            text, session_id = whole_turn(system, user["content"], self.toolbox,
                                          self.conversation, user.get("images") or (),
                                          **streamed)  # fmt: skip
            reply: Message = {"role": "assistant", "content": text, "tool_calls": []}
            if session_id:
                reply["sdk_session_id"] = session_id
            return TurnResult(text, [*new, reply], 1)
        specs = self.toolbox.specs()
        text = ""
        pieces: list[str] = []  # text of replies cut by max_tokens, continued
        cuts = 0
        for round_no in range(1, self.max_tool_rounds + 1):
            if self.should_stop():
                raise TurnAbandoned("shutdown before the provider call")
            self.heartbeat()
            self._fit(new)
            turn = self._complete(system, self.conversation + new, specs, "".join(pieces))
            self.heartbeat()
            if turn.stop_reason == "max_tokens":
                # never delivered as if complete: continued, or said to be cut
                cuts += 1
                logger.warning("model reply cut by max_tokens (%d of %d continuations)",
                               cuts, MAX_CONTINUATIONS)  # fmt: skip
                cut_text = turn.text + (f"\n{CUT_CALLS_NOTE}" if turn.tool_calls else "")
                new.append({"role": "assistant", "content": cut_text, "tool_calls": []})
                pieces.append(turn.text)
                if cuts > MAX_CONTINUATIONS:
                    text = "".join(pieces) + "\n\n" + CUT_NOTE.format(n=cuts)
                    return TurnResult(text.strip(), new, round_no)
                new.append({"role": "user", "content": CONTINUE_PROMPT})
                continue
            new.append(turn.as_message())
            text = "".join(pieces) + turn.text
            pieces = []
            if not turn.tool_calls:
                return TurnResult(text, new, round_no)
            for call in turn.tool_calls:
                if self.should_stop():
                    raise TurnAbandoned("shutdown before a tool call")
                result = self.toolbox.call(call.name, call.arguments)
                message: Message = {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "name": call.name,
                    "content": result.content,
                    "is_error": result.is_error,
                }
                if result.images:
                    message["images"] = [dict(i) for i in result.images]
                new.append(message)
        note = ROUNDS_NOTE.format(n=self.max_tool_rounds)
        logger.warning("turn stopped after %d tool rounds", self.max_tool_rounds)
        return TurnResult(f"{text}\n\n{note}".strip(), new, self.max_tool_rounds)

    def _complete(self, system: str, messages: list[Message], specs: list[Any],
                  before: str) -> Any:  # fmt: skip
        """One provider call; streamed into ``on_text`` (after ``before``, the text of cut
        replies being continued) when both sides can."""
        on_text = self.on_text
        stream = getattr(self.provider, "complete_stream", None)
        if on_text is None or stream is None:
            return self.provider.complete(system, messages, specs)
        return stream(system, messages, specs, lambda text: on_text(before + text))

    def _fit(self, new: list[Message]) -> None:
        """Compact the stored conversation when it and the turn so far are over the limit."""
        limit = self.context_limit_chars
        if limit is None or not self.conversation:
            return
        too_many = self.history_messages is not None and (
            len(self.conversation) + len(new) > self.history_messages
        )
        pending = conversation_chars(new)
        self.encoded.sync(self.conversation)
        if not too_many and self.encoded.chars(self.conversation) + pending <= limit:
            return
        result = compact(
            self.provider,
            self.conversation,
            limit_chars=limit,
            pending_chars=pending,
            keep_messages=self.history_messages // 2 if self.history_messages else None,
            encoded=self.encoded,
        )
        self.heartbeat()
        if result is None:
            return
        self.conversation = result.conversation
        if self.on_compaction is not None:
            self.on_compaction(result)

    def accept(self, result: TurnResult) -> None:
        self.conversation.extend(result.messages)

    def clear(self) -> None:
        self.conversation = []


def save_conversation(
    outbound: Outbound,
    conversation: list[Message],
    max_messages: int,
    encoded: Encoded | None = None,
    store: ConversationStore | None = None,
) -> None:
    """Store the bounded conversation, in the caller's transaction (so it commits with the
    turn's replies and acks, or not at all). ``encoded`` (the agent's): only messages new
    since the last save are encoded. ``store`` (the runner's): only the messages new since
    its last save are written and the cut ones deleted (``conversation_store.py``)."""
    enc = encoded or Encoded()
    if encoded is not None:
        encoded.sync(conversation)
    bounded = bound_conversation(conversation, max_messages, enc)
    with transaction(outbound.conn):
        (store or ConversationStore()).save(outbound.conn, bounded, enc)


_TRANSCRIPT_DIRS: set[Path] = set()  # transcript folders this process made or found


def append_transcript(
    session_dir: Path,
    session_id: str,
    messages: list[Message],
    extra: dict[str, Any] | None = None,
    encoded: Encoded | None = None,
) -> None:
    """Append messages to ``<session_dir>/conversations/<session_id>.jsonl`` (best effort).
    ``encoded``: the agent's kept JSON of its messages (a turn's were encoded for its save
    already: the line is that JSON with the time put first, not a second ``dumps``)."""
    try:
        path = transcript_path(session_dir, session_id)
        if path.parent not in _TRANSCRIPT_DIRS:  # (a folder removed meanwhile: the open
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # says so, and
            _TRANSCRIPT_DIRS.add(path.parent)  # the next turn makes it again)
        ts = iso(utcnow())
        lines = []
        for m in messages:
            kept = encoded.known(m) if encoded is not None and not extra else None
            if kept is not None and len(kept) > 2 and "ts" not in m:
                lines.append(f'{{"ts":{dumps(ts)},{kept[1:]}\n')  # = dumps({"ts": ts, **m})
            else:
                lines.append(dumps({"ts": ts, **(extra or {}), **m}) + "\n")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write("".join(lines))
    except FileNotFoundError as exc:
        _TRANSCRIPT_DIRS.discard(transcript_path(session_dir, session_id).parent)
        logger.warning("could not append to the transcript: %s", exc)
    except OSError as exc:
        logger.warning("could not append to the transcript: %s", exc)
