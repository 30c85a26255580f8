"""The Anthropic provider: the Messages API with tool use, through the official SDK.

Settings (``ProviderConfig``): ``model`` (default ``claude-sonnet-4-6``), ``max_tokens``,
``api_key`` (else env ``ANTHROPIC_API_KEY``), ``base_url`` (else env
``ANTHROPIC_BASE_URL``, else the SDK's default), ``timeout_s``, ``max_retries`` (the SDK's
own retries with backoff). With a base URL but no key, a placeholder key is sent (for a
credential-injecting proxy); with neither, creating the provider fails.
"""

from __future__ import annotations

import logging
from typing import Any

import anthropic
from anthropic.types import (
    ContentBlockParam,
    MessageParam,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from anthropic.types import Message as AnthropicMessage

from carapace.errors import ProviderError

from ._common import (
    PLACEHOLDER_KEY,
    ProviderAPIError,
    env,
    first_set,
    is_retryable_status,
    one_line,
    safe_url,
)
from .base import Message, ProviderConfig, ToolCall, ToolSpec, Turn

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-6"
EMPTY_TEXT = "(empty)"  # the API rejects empty text blocks


class AnthropicProvider:
    name: str = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = config.model or DEFAULT_MODEL
        self.base_url = first_set(config.base_url, env("ANTHROPIC_BASE_URL"))
        key = first_set(config.api_key, env("ANTHROPIC_API_KEY"))
        if key is None:
            if self.base_url is None:
                raise ProviderError(
                    "The anthropic provider needs an API key: set ANTHROPIC_API_KEY "
                    "or api_key in the provider config"
                )
            key = PLACEHOLDER_KEY
        self._key = key
        self.client = anthropic.Anthropic(
            api_key=key,
            base_url=self.base_url,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        if tools:
            kwargs["tools"] = to_anthropic_tools(tools)
        try:
            response = self.client.messages.create(
                model=self.model,
                max_tokens=self.config.max_tokens,
                messages=to_anthropic_messages(messages),
                timeout=self.config.timeout_s,  # explicit: no SDK "use streaming" refusal
                **kwargs,
            )
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from None
        turn = parse_anthropic_message(response)
        _log_turn(self.model, turn)
        return turn

    def _error(self, exc: anthropic.AnthropicError) -> ProviderError:
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            kind = exc.type or "error"
            detail = exc.api_message or exc.message
            return ProviderAPIError(
                f"Anthropic API error {status} ({kind}): {one_line(detail, self._key)}",
                status_code=status,
                retryable=is_retryable_status(status),
            )
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderAPIError(
                f"Anthropic API timed out after {self.config.timeout_s:g}s "
                f"({safe_url(self.base_url)})",
                status_code=None,
                retryable=True,
            )
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc
            return ProviderAPIError(
                f"Anthropic API unreachable at {safe_url(self.base_url)}: "
                f"{one_line(str(cause), self._key)}",
                status_code=None,
                retryable=True,
            )
        return ProviderError(
            f"Anthropic SDK error ({type(exc).__name__}): {one_line(str(exc), self._key)}"
        )


def to_anthropic_tools(tools: list[ToolSpec]) -> list[ToolParam]:
    return [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema}
        for t in tools
    ]


def to_anthropic_messages(messages: list[Message]) -> list[MessageParam]:
    """Neutral messages → Messages API messages.

    Tool results become ``tool_result`` blocks of a user message; consecutive user-side
    items (tool results, user text) share one user message, tool results first as the API
    requires. Empty assistant text is dropped, and an assistant message left with nothing
    is skipped.
    """
    out: list[MessageParam] = []
    for message in messages:
        role = message.get("role")
        if role == "user":
            text = _text(message.get("content")) or EMPTY_TEXT
            _append(out, "user", [TextBlockParam(type="text", text=text)])
        elif role == "tool":
            block = ToolResultBlockParam(
                type="tool_result",
                tool_use_id=str(message.get("tool_call_id", "")),
                content=_text(message.get("content")),
            )
            if message.get("is_error"):
                block["is_error"] = True
            _append(out, "user", [block])
        elif role == "assistant":
            blocks: list[ContentBlockParam] = []
            text = _text(message.get("content"))
            if text:
                blocks.append(TextBlockParam(type="text", text=text))
            for call in message.get("tool_calls") or ():
                blocks.append(
                    ToolUseBlockParam(
                        type="tool_use",
                        id=str(call["id"]),
                        name=str(call["name"]),
                        input=dict(call.get("arguments") or {}),
                    )
                )
            if blocks:
                _append(out, "assistant", blocks)
        else:
            raise ProviderError(f"Unsupported message role for anthropic: {role!r}")
    return out


def parse_anthropic_message(response: AnthropicMessage) -> Turn:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in response.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            arguments = block.input if isinstance(block.input, dict) else {"_raw": block.input}
            calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
    usage = response.usage
    return Turn(
        text="".join(texts),
        tool_calls=tuple(calls),
        stop_reason=str(response.stop_reason or ("tool_use" if calls else "end_turn")),
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
    )


def _append(out: list[MessageParam], role: str, blocks: list[ContentBlockParam]) -> None:
    if out and out[-1]["role"] == role:
        content = out[-1]["content"]
        assert isinstance(content, list)  # built here, always a list
        if role == "user":
            results = [b for b in blocks if b["type"] == "tool_result"]
            others = [b for b in blocks if b["type"] != "tool_result"]
            merged = [b for b in content if b["type"] == "tool_result"] + results
            merged += [b for b in content if b["type"] != "tool_result"] + others
            content[:] = merged
        else:
            content.extend(blocks)
        return
    if role == "user":
        out.append({"role": "user", "content": blocks})
    else:
        out.append({"role": "assistant", "content": blocks})


def _text(content: object) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else str(content)


def _log_turn(model: str, turn: Turn) -> None:
    logger.debug(
        "%s: stop=%s tool_calls=%d tokens in=%d out=%d",
        model,
        turn.stop_reason,
        len(turn.tool_calls),
        turn.input_tokens,
        turn.output_tokens,
    )
