"""The fake Anthropic Messages API: replies, usage, server-sent events and error bodies
as ``POST /v1/messages`` answers them (used by ``carapace.testing.fake_llm``)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from carapace.testing.llm_script import FakeReply
from carapace.testing.sse import sse


def reply(item: FakeReply, model: str, next_id: Callable[[], int]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if item.text:
        content.append({"type": "text", "text": item.text})
    for call in item.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_fake_{next_id()}",
                "name": call.name,
                "input": call.arguments,
            }
        )
    stop = item.stop_reason or ("tool_use" if item.tool_calls else "end_turn")
    return {
        "id": f"msg_fake_{next_id()}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage(item),
    }


def usage(item: FakeReply) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": item.input_tokens, "output_tokens": item.output_tokens}
    if item.cache_read_tokens or item.cache_write_tokens:
        usage["cache_read_input_tokens"] = item.cache_read_tokens
        usage["cache_creation_input_tokens"] = item.cache_write_tokens
    return usage


def events(reply: dict[str, Any]) -> list[str]:
    usage = dict(reply["usage"])
    start = {**reply, "content": [], "stop_reason": None,
             "usage": {**usage, "output_tokens": 1}}  # fmt: skip
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(reply["content"]):
        first: dict[str, Any]
        if block["type"] == "text":
            first = {"type": "text", "text": ""}
            text = block["text"]
            deltas = [
                {"type": "text_delta", "text": text[i : i + 8]} for i in range(0, len(text), 8)
            ]
        else:
            first = {**block, "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": raw}]
        events.append(sse("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": first}))  # fmt: skip
        for delta in deltas:
            events.append(sse("content_block_delta", {"type": "content_block_delta",
                                                       "index": index, "delta": delta}))  # fmt: skip
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": reply["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }))  # fmt: skip
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def check_messages(body: dict[str, Any]) -> str | None:
    """The Messages API's structure rules, as the real API enforces them: roles alternate
    starting with ``user``; each ``tool_use`` is answered by a ``tool_result`` in the next
    (user) message, results first; every ``tool_result`` answers a ``tool_use`` of the
    message just before; no empty text blocks. Returns the violation, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    pending: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            return f"messages.{i}: roles must alternate starting with user (got {role!r})"
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{i}: content must be a non-empty string or list"
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        if role == "user":
            if set(results) != pending or len(results) != len(pending):
                missing = sorted(pending - set(results))
                extra = sorted(set(results) - pending)
                return (f"messages.{i}: tool_use ids {missing} have no tool_result here, or "
                        f"tool_result ids {extra} answer no tool_use of the previous message")  # fmt: skip
            kinds = [b.get("type") for b in blocks]
            if results and kinds[: len(results)] != ["tool_result"] * len(results):
                return f"messages.{i}: tool_result blocks must come first"
            pending = set()
        else:
            if results:
                return f"messages.{i}: an assistant message cannot hold tool_result blocks"
            pending = {str(b.get("id")) for b in blocks if b.get("type") == "tool_use"}
        for j, b in enumerate(blocks):
            if b.get("type") == "text" and not b.get("text"):
                return f"messages.{i}: text content blocks must be non-empty"
            inner = b.get("content") if b.get("type") == "tool_result" else None
            for k, block in enumerate([b, *(inner if isinstance(inner, list) else [])]):
                if block.get("type") != "image":
                    continue
                if role != "user":
                    return (
                        f"messages.{i}.content.{j}: image blocks are only allowed in user messages"
                    )
                problem = check_image(block)
                if problem:
                    where = f"messages.{i}.content.{j}" + (f".content.{k - 1}" if k else "")
                    return f"{where}: {problem}"
    if pending:
        return "messages: the last assistant message's tool_use blocks have no tool_result"
    return None


IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_B64 = 5 * 1024 * 1024  # the API's cap per image


def check_image(block: dict[str, Any]) -> str | None:
    """An image block's shape as the API checks it: ``source`` base64 with a supported
    ``media_type`` and decodable ``data`` (at most 5 MB) whose bytes are that type, or a
    ``url`` source."""
    source = block.get("source")
    if not isinstance(source, dict):
        return "image.source: Field required"
    if source.get("type") == "url":
        url = source.get("url")
        return (
            None
            if isinstance(url, str) and url.startswith("https://")
            else "image.source.url: invalid"
        )
    if source.get("type") != "base64":
        return f"image.source.type: Input should be 'base64' or 'url' (got {source.get('type')!r})"
    media_type, data = source.get("media_type"), source.get("data")
    if media_type not in IMAGE_TYPES:
        return f"image.source.media_type: Input should be one of {', '.join(IMAGE_TYPES)}"
    if not isinstance(data, str) or not data:
        return "image.source.data: Field required"
    if len(data) > MAX_IMAGE_B64:
        return "image.source.data: image exceeds 5 MB maximum"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "image.source.data: invalid base64 data"
    if sniff_image(raw[:16]) != media_type:
        return f"image.source.data: the image is not {media_type}"
    return None


def sniff_image(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
