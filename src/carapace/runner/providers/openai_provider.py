"""The OpenAI-compatible provider: Chat Completions with function tools, official SDK.

Works with OpenAI and any compatible endpoint (Ollama, vLLM, OpenRouter, LM Studio).

Settings (``ProviderConfig``): ``model`` (default ``gpt-4o-mini``), ``max_tokens``,
``api_key`` (else env ``OPENAI_API_KEY``), ``base_url`` (else env ``OPENAI_BASE_URL``,
else OpenAI), ``timeout_s``, ``max_retries``. With a base URL but no key (a keyless
local server), the placeholder key ``not-needed`` is sent; with neither, creating the
provider fails. ``extra["max_tokens_field"]`` names the request field for the token limit:
by default ``max_completion_tokens`` against OpenAI itself and ``max_tokens`` against a
custom base URL (what most compatible servers understand).

Conversion notes: the system prompt is the first message; a tool result that is an error
is sent with the content prefixed by ``Error: `` (the API has no error flag). Tool-call
arguments in a response that are not a JSON object (malformed JSON, or another JSON
type) become ``{"_raw": "<the string as received>"}``; the runner's argument validation
then reports the error to the model, which can retry. Empty arguments mean ``{}``.
Finish reasons map to the neutral (Anthropic) vocabulary: ``stop`` → ``end_turn``,
``tool_calls`` → ``tool_use``, ``length`` → ``max_tokens``; others pass through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)

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

DEFAULT_MODEL = "gpt-4o-mini"
_FINISH_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


class OpenAIProvider:
    name: str = "openai"
    takes_images = True  # a person's images go as image_url parts (vision models)

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = config.model or DEFAULT_MODEL
        proxied = proxy_client("openai", openai, config.timeout_s)
        if proxied is not None:  # the host adds the key and retries (carapace.proxy)
            self.base_url: str | None = proxied[0]
            self._key = PLACEHOLDER_KEY
            custom = first_set(config.base_url, env("OPENAI_BASE_URL")) is not None
            default_field = "max_tokens" if custom else "max_completion_tokens"
            self.max_tokens_field = str(config.extra.get("max_tokens_field", default_field))
            self.client = openai.OpenAI(
                api_key=PLACEHOLDER_KEY, base_url=proxied[0], http_client=proxied[1],
                timeout=config.timeout_s, max_retries=0,
            )  # fmt: skip
            return
        self.base_url = first_set(config.base_url, env("OPENAI_BASE_URL"))
        key = api_key(
            config.api_key,
            "OPENAI_API_KEY",
            self.base_url,
            "The openai provider needs an API key: set OPENAI_API_KEY or api_key "
            "in the provider config (or a base_url for a keyless local server)",
        )
        self._key = key
        default_field = "max_tokens" if self.base_url else "max_completion_tokens"
        self.max_tokens_field = str(config.extra.get("max_tokens_field", default_field))
        self.client = openai.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    def _request(
        self, system: str, messages: list[Message], tools: list[ToolSpec]
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {self.max_tokens_field: self.config.max_tokens}
        if tools:
            kwargs["tools"] = to_openai_tools(tools)
        return {"model": self.model, "messages": to_openai_messages(system, messages), **kwargs}

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        try:
            response = self.client.chat.completions.create(**self._request(system, messages, tools))
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        turn = parse_openai_completion(response)
        log_turn(logger, self.model, turn)
        return turn

    def complete_stream(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_text: Callable[[str], None],
    ) -> Turn:
        """``complete`` over a streamed response (``stream=True``, usage asked for with
        ``stream_options``): ``on_text`` gets the text written so far after each text
        delta; tool calls are assembled from their deltas by index."""
        text = ""
        calls: dict[int, dict[str, str]] = {}
        finish = ""
        usage: Any = None
        try:
            chunks = self.client.chat.completions.create(
                **self._request(system, messages, tools),
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                delta = choice.delta
                if delta.content:
                    text += delta.content
                    on_text(text)
                for call in delta.tool_calls or ():
                    acc = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    acc["id"] = call.id or acc["id"]
                    if call.function is not None:
                        acc["name"] += call.function.name or ""
                        acc["arguments"] += call.function.arguments or ""
                if choice.finish_reason:
                    finish = str(choice.finish_reason)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        tool_calls = tuple(
            ToolCall(id=c["id"] or f"call-{i + 1}", name=c["name"],
                     arguments=parse_arguments(c["arguments"]))
            for i, c in (sorted(calls.items()))
        )  # fmt: skip
        stop_reason = _FINISH_REASONS.get(finish, finish) or (
            "tool_use" if tool_calls else "end_turn"
        )
        turn = Turn(
            text=text,
            tool_calls=tool_calls,
            stop_reason=stop_reason,
            input_tokens=(usage.prompt_tokens or 0) if usage else 0,
            output_tokens=(usage.completion_tokens or 0) if usage else 0,
        )
        log_turn(logger, self.model, turn)
        return turn

    def _error(self, exc: openai.OpenAIError) -> ProviderError:
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            body = exc.body
            detail = exc.message
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                detail = body["message"]
            kind = f" ({exc.type})" if exc.type else ""
            return ProviderAPIError(
                f"OpenAI API error {status}{kind}: {one_line(detail, self._key)}",
                status_code=status,
                retryable=is_retryable_status(status),
            )
        return sdk_error(
            "OpenAI",
            exc,
            timeout_error=openai.APITimeoutError,
            connection_error=openai.APIConnectionError,
            timeout_s=self.config.timeout_s,
            base_url=self.base_url,
            key=self._key,
        )


def to_openai_tools(tools: list[ToolSpec]) -> list[ChatCompletionFunctionToolParam]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema,
            },
        }
        for t in tools
    ]


def to_openai_messages(system: str, messages: list[Message]) -> list[ChatCompletionMessageParam]:
    out: list[ChatCompletionMessageParam] = []
    if system:
        out.append({"role": "system", "content": system})
    images: list[Any] = []  # tool results' images: a user message after the tool messages
    for message in messages:
        role = message.get("role")
        content = text_of(message.get("content"))
        if role != "tool" and images:
            out.append({"role": "user", "content": images})
            images = []
        if role == "user":
            sent = [i for i in message.get("images") or () if isinstance(i, dict)]
            if sent:  # a person's images: content parts after the text
                parts: list[Any] = [{"type": "text", "text": content}]
                parts += [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in sent]
                out.append({"role": "user", "content": parts})
            else:
                out.append({"role": "user", "content": content})
        elif role == "tool":
            if message.get("is_error"):
                content = f"Error: {content}"
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(message.get("tool_call_id", "")),
                    "content": content,
                }
            )
            for image in message.get("images") or ():
                if not images:
                    images.append(
                        {"type": "text", "text": "Images returned by the tool calls above:"}
                    )
                images.append({"type": "image_url", "image_url": {"url": _data_url(image)}})
        elif role == "assistant":
            calls: list[ChatCompletionMessageFunctionToolCallParam] = [
                {
                    "id": str(call["id"]),
                    "type": "function",
                    "function": {
                        "name": str(call["name"]),
                        "arguments": json.dumps(call.get("arguments") or {}, ensure_ascii=False),
                    },
                }
                for call in message.get("tool_calls") or ()
            ]
            assistant: ChatCompletionAssistantMessageParam = {"role": "assistant"}
            if calls:
                assistant["tool_calls"] = calls
                assistant["content"] = content or None
            else:
                assistant["content"] = content
            out.append(assistant)
        else:
            raise ProviderError(f"Unsupported message role for openai: {role!r}")
    if images:
        out.append({"role": "user", "content": images})
    return out


def parse_openai_completion(response: ChatCompletion) -> Turn:
    if not response.choices:
        raise ProviderError("OpenAI API returned no choices")
    choice = response.choices[0]
    message = choice.message
    calls: list[ToolCall] = []
    for i, call in enumerate(message.tool_calls or ()):
        if call.type != "function":
            continue  # custom (free-form) tools are never offered
        calls.append(
            ToolCall(
                id=call.id or f"call-{i + 1}",
                name=call.function.name,
                arguments=parse_arguments(call.function.arguments),
            )
        )
    finish = str(choice.finish_reason or "")
    stop_reason = _FINISH_REASONS.get(finish, finish) or ("tool_use" if calls else "end_turn")
    usage = response.usage
    return Turn(
        text=message.content or "",
        tool_calls=tuple(calls),
        stop_reason=stop_reason,
        input_tokens=(usage.prompt_tokens or 0) if usage else 0,
        output_tokens=(usage.completion_tokens or 0) if usage else 0,
    )


def parse_arguments(raw: str | None) -> dict[str, Any]:
    """JSON-object arguments; anything else becomes ``{"_raw": raw}`` (see module doc)."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def _data_url(image: dict[str, Any]) -> str:
    return f"data:{image.get('media_type')};base64,{image.get('data')}"
