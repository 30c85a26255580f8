"""The provider seam: a model that takes a conversation and tools and returns one turn.

Most of carapace's providers are plain model APIs with a tool-use loop driven by the runner;
``claude`` (NanoClaw's provider: Claude Code through the Claude Agent SDK) runs whole turns. The conversation is kept in a
provider-neutral form (``Message`` dicts below) so it can be persisted in
``session_state``/transcripts and resumed by any provider.

Message shapes (JSON-serialisable)::

    {"role": "user", "content": "text"}
    {"role": "assistant", "content": "text or empty",
     "tool_calls": [{"id": "...", "name": "...", "arguments": {...}}]}
    {"role": "tool", "tool_call_id": "...", "name": "...", "content": "text", "is_error": false,
     "images": [{"media_type": "image/png", "data": "<base64>"}]}   # images: optional
"""

from __future__ import annotations

from collections.abc import Callable

from carapace.errors import ProviderError, ValidationError
from carapace.record import field, record

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any, Protocol
else:
    Protocol = object  # a protocol is read by type checkers only


Message = dict[str, "Any"]

# Other accepted spellings of registered provider names (lower case): ``claude-agent-sdk``
# was the Claude Agent SDK provider's name before it took NanoClaw's ``claude``.
PROVIDER_ALIASES = {"claude-agent-sdk": "claude"}


@record(frozen=True)
class ToolSpec:
    """A tool offered to the model: JSON-schema input, shared by every provider."""

    name: str
    description: str
    input_schema: dict[str, Any]


@record(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@record(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False
    images: tuple[dict[str, str], ...] = ()  # {"media_type": "image/png", "data": base64}


@record(frozen=True)
class Turn:
    """One assistant turn: final text and/or tool calls."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: str = "end_turn"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def as_message(self) -> Message:
        return {
            "role": "assistant",
            "content": self.text,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls
            ],
        }


@record(frozen=True)
class ProviderConfig:
    """What a provider needs; filled from the agent group's config and the environment."""

    name: str = "mock"
    model: str | None = None
    max_tokens: int = 4096
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 2
    agent_dir: str | None = None  # the group folder (the mock reads its script there)
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        """Return the model's next turn. Raises ``ProviderError`` on failure."""
        ...


ProviderFactory = Callable[[ProviderConfig], Provider]

_REGISTRY: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> None:
    if name in _REGISTRY:
        raise ValidationError(f"Provider already registered: {name}")
    _REGISTRY[name] = factory


def provider_names() -> list[str]:
    return list(_REGISTRY)


def create_provider(config: ProviderConfig) -> Provider:
    factory = _REGISTRY.get(PROVIDER_ALIASES.get(config.name, config.name))
    if factory is None:
        names = ", ".join(_REGISTRY) or "(none)"
        raise ProviderError(f"Unknown provider: {config.name}. Registered: {names}")
    return factory(config)
