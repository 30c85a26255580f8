"""The fake OpenAI Chat Completions API: replies, usage, server-sent events and error
bodies as ``POST /v1/chat/completions`` answers them (used by ``carapace.testing.fake_llm``)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from carapace.testing.llm_script import FakeReply
from carapace.testing.sse import sse

CREATED = 1_700_000_000  # fixed "created" timestamp in OpenAI responses


def reply(item: FakeReply, model: str, next_id: Callable[[], int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": item.text or None}
    if item.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_fake_{next_id()}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.raw_arguments
                    if call.raw_arguments is not None
                    else json.dumps(call.arguments),
                },
            }
            for call in item.tool_calls
        ]
    finish = item.stop_reason or ("tool_calls" if item.tool_calls else "stop")
    return {
        "id": f"chatcmpl-fake-{next_id()}",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage(item),
    }


def usage(item: FakeReply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": item.input_tokens,
        "completion_tokens": item.output_tokens,
        "total_tokens": item.input_tokens + item.output_tokens,
    }
    if item.cache_read_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": item.cache_read_tokens}
    return usage


def events(reply: dict[str, Any], want_usage: bool) -> list[str]:
    base = {k: reply[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    message = reply["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse(None, {**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    text = message.get("content") or ""
    for i in range(0, len(text), 8):
        events.append(chunk({"content": text[i : i + 8]}))
    for index, call in enumerate(message.get("tool_calls") or ()):
        events.append(chunk({"tool_calls": [{"index": index, **call}]}))
    events.append(chunk({}, reply["choices"][0]["finish_reason"]))
    if want_usage:
        events.append(sse(None, {**base, "choices": [], "usage": reply["usage"]}))
    events.append("data: [DONE]\n\n")
    return events


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def check_messages(body: dict[str, Any]) -> str | None:
    """Chat Completions' structure rules: an assistant message with ``tool_calls`` must be
    followed by one ``tool`` message per call id before anything else, and a ``tool`` message
    must answer a pending call. Returns the violation, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    pending: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                return (f"messages.[{i}].tool_call_id: {call_id!r} does not answer a tool call "
                        "of the preceding assistant message")  # fmt: skip
            pending.discard(call_id)
            continue
        if pending:
            return (f"messages.[{i}]: an assistant message with 'tool_calls' must be followed by "
                    f"tool messages responding to each 'tool_call_id' (missing {sorted(pending)})")  # fmt: skip
        if role == "assistant":
            pending = {str(c.get("id")) for c in m.get("tool_calls") or []}
        elif role not in ("system", "user", "developer"):
            return f"messages.[{i}].role: unknown role {role!r}"
        parts = m.get("content")
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            if isinstance(part, dict) and part.get("type") == "image_url":
                if role != "user":
                    return f"messages.[{i}].content.[{j}]: image_url parts are only allowed in user messages"
                problem = check_image_url(part)
                if problem:
                    return f"messages.[{i}].content.[{j}]: {problem}"
    return None


def check_image_url(part: dict[str, Any]) -> str | None:
    """An ``image_url`` part: ``{"image_url": {"url": ...}}`` with an https URL or a
    ``data:image/<png|jpeg|gif|webp>;base64,`` URL whose bytes are that type."""
    from carapace.testing.llm_anthropic import IMAGE_TYPES, sniff_image

    inner = part.get("image_url")
    url = inner.get("url") if isinstance(inner, dict) else None
    if not isinstance(url, str):
        return "image_url.url: Field required"
    if url.startswith("https://"):
        return None
    head, sep, data = url.partition(",")
    media_type = head.removeprefix("data:").removesuffix(";base64")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return "image_url.url: Invalid image URL: expected an https or base64 data URL"
    if media_type not in IMAGE_TYPES:
        return f"image_url.url: unsupported image type {media_type!r}"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "image_url.url: invalid base64 data"
    if sniff_image(raw[:16]) != media_type:
        return f"image_url.url: the image is not {media_type}"
    return None
