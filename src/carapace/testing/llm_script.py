"""The fake model servers' script: the items a test queues (replies, errors, tool calls),
their JSON form (for servers in a separate process) and the request record."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias


@dataclass(frozen=True)
class FakeToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # default: toolu_fake_<n> / call_fake_<n>
    raw_arguments: str | None = None  # openai only: sent verbatim (e.g. malformed JSON)


@dataclass(frozen=True)
class FakeReply:
    text: str = ""
    tool_calls: tuple[FakeToolCall, ...] = ()
    stop_reason: str | None = None  # default: tool_use/end_turn, or tool_calls/stop
    input_tokens: int = 10
    output_tokens: int = 5
    delay_s: float = 0.0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    event_delay_s: float = 0.0  # streaming only: pause between server-sent events
    # streaming, in process only: after ``hold_after`` events, wait until ``hold`` is set
    # (at most 60 s), so a test sees a reply half-written without timing anything
    hold: threading.Event | None = field(default=None, compare=False)
    hold_after: int = 0


@dataclass(frozen=True)
class FakeError:
    status: int
    message: str = "fake error"
    body: Any = None  # sent as JSON instead of the API's usual error object
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Item: TypeAlias = FakeReply | FakeError
ScriptItem: TypeAlias = (
    FakeReply | FakeError | str | dict[str, Any] | Callable[[dict[str, Any]], Any]
)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any

    @property
    def api_key(self) -> str | None:
        """The key the client sent (``x-api-key``, else the ``Authorization`` bearer)."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        auth = self.headers.get("authorization")
        return auth.removeprefix("Bearer ") if auth is not None else None


def parse_item(data: Any) -> Item:
    """A script item from its JSON form.

    ``"text"`` → a text reply. ``{"text", "tool_calls": [{"name", "arguments", "id",
    "raw_arguments"}], "stop_reason", "input_tokens", "output_tokens", "delay_s"}`` → a
    reply (every field optional). ``{"status", "message", "body", "headers", "delay_s"}``
    → an HTTP error (``status`` required).
    """
    if isinstance(data, FakeReply | FakeError):
        return data
    if isinstance(data, str):
        return FakeReply(text=data)
    if not isinstance(data, dict):
        raise ValueError(f"script item must be a string or an object, got {data!r}")
    if "status" in data:
        return FakeError(
            status=int(data["status"]),
            message=str(data.get("message", "fake error")),
            body=data.get("body"),
            headers={str(k): str(v) for k, v in dict(data.get("headers") or {}).items()},
            delay_s=float(data.get("delay_s", 0.0)),
        )
    unknown = set(data) - {
        "text",
        "tool_calls",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "delay_s",
        "cache_read_tokens",
        "cache_write_tokens",
        "event_delay_s",
    }
    if unknown:
        raise ValueError(f"unknown script item field(s): {', '.join(sorted(unknown))}")
    calls = tuple(
        FakeToolCall(
            name=str(c["name"]),
            arguments=dict(c.get("arguments") or {}),
            id=c.get("id"),
            raw_arguments=c.get("raw_arguments"),
        )
        for c in data.get("tool_calls") or ()
    )
    return FakeReply(
        text=str(data.get("text", "")),
        tool_calls=calls,
        stop_reason=data.get("stop_reason"),
        input_tokens=int(data.get("input_tokens", 10)),
        output_tokens=int(data.get("output_tokens", 5)),
        delay_s=float(data.get("delay_s", 0.0)),
        cache_read_tokens=int(data.get("cache_read_tokens", 0)),
        cache_write_tokens=int(data.get("cache_write_tokens", 0)),
        event_delay_s=float(data.get("event_delay_s", 0.0)),
    )


def item_to_json(item: ScriptItem) -> Any:
    """The JSON form of a script item (callables have none)."""
    if callable(item):
        raise ValueError("a callable script item cannot be sent to another process")
    if isinstance(item, str | dict):
        return item
    if isinstance(item, FakeError):
        return {
            "status": item.status,
            "message": item.message,
            "body": item.body,
            "headers": item.headers,
            "delay_s": item.delay_s,
        }
    return {
        "text": item.text,
        "tool_calls": [
            {"name": c.name, "arguments": c.arguments, "id": c.id, "raw_arguments": c.raw_arguments}
            for c in item.tool_calls
        ],
        "stop_reason": item.stop_reason,
        "input_tokens": item.input_tokens,
        "output_tokens": item.output_tokens,
        "delay_s": item.delay_s,
        "cache_read_tokens": item.cache_read_tokens,
        "cache_write_tokens": item.cache_write_tokens,
        "event_delay_s": item.event_delay_s,
    }


def _prepare(item: ScriptItem) -> Item | Callable[[dict[str, Any]], Any]:
    if isinstance(item, FakeReply | FakeError | str | dict):
        return parse_item(item)
    return item


def load_script_file(path: str | os.PathLike[str]) -> tuple[list[Item], Item | None]:
    """A script file: a JSON list of items, or ``{"responses": [...], "default": item}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        items, default = data.get("responses", []), data.get("default")
    else:
        items, default = data, None
    if not isinstance(items, list):
        raise ValueError("script must be a JSON list of items or {'responses': [...]}")
    return [parse_item(i) for i in items], parse_item(default) if default is not None else None
