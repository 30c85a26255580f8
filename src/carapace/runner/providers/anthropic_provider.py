"""The Anthropic provider: the Messages API with tool use, through the official SDK.

The system prompt and the tool definitions are sent with ``cache_control`` (prompt caching);
the reply's cache reads/writes are in ``Turn.cache_read_tokens``/``cache_write_tokens`` and
the host's proxy records them per call (``carapace_usage``).

Settings (``ProviderConfig``): ``model`` (default ``claude-sonnet-4-6``), ``max_tokens``,
``api_key`` (else env ``ANTHROPIC_API_KEY``), ``base_url`` (else env
``ANTHROPIC_BASE_URL``, else the SDK's default), ``timeout_s``, ``max_retries`` (the SDK's
own retries with backoff). With a base URL but no key, a placeholder key is sent (for a
credential-injecting proxy); with neither, creating the provider fails.
"""

from __future__ import annotations

from collections.abc import Callable
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
from carapace.log import get_logger

from ._common import (
    PLACEHOLDER_KEY,
    ProviderAPIError,
    api_key,
    env,
    first_set,
    is_retryable_status,
    log_turn,
    one_line,
    proxy_client,
    sdk_error,
    text_of,
)
from .base import Message, ProviderConfig, ToolCall, ToolSpec, Turn

logger = get_logger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-6"
EMPTY_TEXT = "(empty)"  # the API rejects empty text blocks
CACHE = {"type": "ephemeral"}


class AnthropicProvider:
    name: str = "anthropic"
    takes_images = True  # a person's images go as image blocks of the user message

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = config.model or DEFAULT_MODEL
        proxied = proxy_client("anthropic", anthropic, config.timeout_s)
        if proxied is not None:  # the host adds the key and retries (carapace.proxy)
            self.base_url: str | None = proxied[0]
            self._key = PLACEHOLDER_KEY
            self.client = anthropic.Anthropic(
                api_key=PLACEHOLDER_KEY, base_url=proxied[0], http_client=proxied[1],
                timeout=config.timeout_s, max_retries=0,
            )  # fmt: skip
            return
        self.base_url = first_set(config.base_url, env("ANTHROPIC_BASE_URL"))
        key = api_key(
            config.api_key,
            "ANTHROPIC_API_KEY",
            self.base_url,
            "The anthropic provider needs an API key: set ANTHROPIC_API_KEY "
            "or api_key in the provider config",
        )
        self._key = key
        self.client = anthropic.Anthropic(
            api_key=key,
            base_url=self.base_url,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    def _request(
        self, system: str, messages: list[Message], tools: list[ToolSpec]
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        # prompt caching: the system prompt and the tool definitions (the stable prefix of
        # every call of a conversation) are marked cacheable
        if system:
            kwargs["system"] = [{"type": "text", "text": system, "cache_control": CACHE}]
        if tools:
            specs: list[Any] = to_anthropic_tools(tools)
            specs[-1] = {**specs[-1], "cache_control": CACHE}
            kwargs["tools"] = specs
        return {"model": self.model, "max_tokens": self.config.max_tokens,
                "messages": to_anthropic_messages(messages), "timeout": self.config.timeout_s,
                **kwargs}  # fmt: skip

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        try:
            # timeout explicit: no SDK "use streaming" refusal
            response = self.client.messages.create(**self._request(system, messages, tools))
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from None
        turn = parse_anthropic_message(response)
        log_turn(logger, self.model, turn)
        return turn

    def complete_stream(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_text: Callable[[str], None],
    ) -> Turn:
        """``complete`` over a streamed response (``messages.stream``): ``on_text`` gets the
        text written so far after each text delta; the turn is the same as ``complete``'s."""
        try:
            with self.client.messages.stream(**self._request(system, messages, tools)) as stream:
                written = ""
                for event in stream:
                    if event.type == "text":
                        written += event.text
                        on_text(written)
                response = stream.get_final_message()
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from None
        turn = parse_anthropic_message(response)
        log_turn(logger, self.model, turn)
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
        return sdk_error(
            "Anthropic",
            exc,
            timeout_error=anthropic.APITimeoutError,
            connection_error=anthropic.APIConnectionError,
            timeout_s=self.config.timeout_s,
            base_url=self.base_url,
            key=self._key,
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
            text = text_of(message.get("content")) or EMPTY_TEXT
            blocks: list[ContentBlockParam] = [TextBlockParam(type="text", text=text)]
            blocks += [_image_block(i) for i in message.get("images") or () if isinstance(i, dict)]
            _append(out, "user", blocks)
        elif role == "tool":
            block = ToolResultBlockParam(
                type="tool_result",
                tool_use_id=str(message.get("tool_call_id", "")),
                content=_result_content(message),
            )
            if message.get("is_error"):
                block["is_error"] = True
            _append(out, "user", [block])
        elif role == "assistant":
            blocks = []
            text = text_of(message.get("content"))
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


def _result_content(message: Message) -> Any:
    """A tool result's text, with its images as image blocks when it has any."""
    text = text_of(message.get("content"))
    images = [i for i in message.get("images") or () if isinstance(i, dict)]
    if not images:
        return text
    blocks: list[Any] = [{"type": "text", "text": text or EMPTY_TEXT}]
    blocks += [_image_block(image) for image in images]
    return blocks


def _image_block(image: dict[str, Any]) -> Any:
    return {"type": "image", "source": {"type": "base64",
            "media_type": str(image.get("media_type")), "data": str(image.get("data"))}}  # fmt: skip


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
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", None) or 0,
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", None) or 0,
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
