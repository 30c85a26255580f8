"""``ask_user_question`` (blocking) and ``send_card`` (spec §8.7-8.8).

Deviations from NanoClaw (docs/compat.md):

* Both go to the conversation the turn answers (its chat origin), else ``session_routing``;
  with neither, ``ask_user_question`` fails at once instead of timing out (W-10).
* The answer row is found by parsing its JSON (not a ``LIKE`` on compact JSON), claimed
  ``completed`` when read, and the heartbeat stays fresh while waiting (W-15); the wait
  wakes on the inbound commit (inotify) instead of polling every second.
* The runner's poll loop acks late answers (after the timeout) ``completed`` so they never
  pin a runner (host §11.1 item 3).
"""

from __future__ import annotations

import time

from carapace.runner.tools.base import Tool, ToolContext, ToolError, TurnAbandoned, tool

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


DEFAULT_TIMEOUT_S = 300
WAIT_SLICE_S = 1.0


def normalize_option(option: object) -> dict[str, Any]:
    if isinstance(option, dict):
        label = option.get("label")
        return {
            "label": label,
            "selectedLabel": option.get("selectedLabel", label),
            "value": option.get("value", label),
        }
    text = str(option)
    return {"label": text, "selectedLabel": text, "value": text}


def _ask_user_question(ctx: ToolContext, args: dict[str, Any]) -> str:
    title, question, options = args.get("title"), args.get("question"), args.get("options")
    if not title or not question or not options:
        raise ToolError("title, question, and options are required")
    timeout = args.get("timeout")
    timeout_s = float(timeout) if isinstance(timeout, int | float) and timeout > 0 else 300.0
    routing = ctx.conversation_routing()
    if routing.empty:
        raise ToolError("There is no conversation to ask in (this session has no chat routing).")
    question_id = ctx.batch.stable_id()  # a retried turn asks the same question, once
    ctx.outbound.write(
        id=question_id,
        kind="chat-sdk",
        content={
            "type": "ask_question",
            "questionId": question_id,
            "title": title,
            "question": question,
            "options": [normalize_option(o) for o in options],
        },
        platform_id=routing.platform_id,
        channel_type=routing.channel_type,
        thread_id=routing.thread_id,
        in_reply_to=ctx.batch.in_reply_to,
        now=ctx.now(),
        once=True,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        ctx.heartbeat()
        row = ctx.inbound.question_response(question_id)
        if row is not None and not ctx.outbound.acked([row.id]):
            ctx.outbound.complete([row.id], now=ctx.now())
            selected = row.data.get("selectedOption")
            return "" if selected is None else str(selected)
        if ctx.should_stop():
            raise TurnAbandoned("shutdown while waiting for an answer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            shown = int(timeout_s) if timeout_s.is_integer() else timeout_s
            raise ToolError(f"Question timed out after {shown}s")
        ctx.wait(min(WAIT_SLICE_S, remaining))


def _send_card(ctx: ToolContext, args: dict[str, Any]) -> str:
    card = args.get("card")
    if not card:
        raise ToolError("card is required")
    routing = ctx.conversation_routing()
    card_id = ctx.batch.stable_id()
    ctx.outbound.write(
        id=card_id,
        kind="chat-sdk",
        content={"type": "card", "card": card, "fallbackText": args.get("fallbackText") or ""},
        platform_id=routing.platform_id,
        channel_type=routing.channel_type,
        thread_id=routing.thread_id,
        in_reply_to=ctx.batch.in_reply_to,
        now=ctx.now(),
        once=True,
    )
    return f"Card sent (id: {card_id})"


_OPTION = {
    "type": ["string", "object"],
    "description": "An option label, or {label, selectedLabel?, value?}.",
}

TOOLS = [
    Tool(
        tool(
            "ask_user_question",
            "Ask the user a multiple-choice question and wait for the answer (the chosen "
            "option's value is returned).",
            {
                "title": {"type": "string"},
                "question": {"type": "string"},
                "options": {"type": "array", "items": _OPTION},
                "timeout": {"type": "number", "description": "Seconds to wait (default 300)."},
            },
            ["title", "question", "options"],
        ),
        _ask_user_question,
    ),
    Tool(
        tool(
            "send_card",
            "Send a card: {title?, description?, children?: [text], actions?: [{label, url}]}.",
            {
                "card": {"type": "object"},
                "fallbackText": {"type": "string", "description": "Text for plain clients."},
            },
            ["card"],
        ),
        _send_card,
    ),
]
