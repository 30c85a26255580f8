"""Model providers behind one seam (see ``base``), with the built-ins registered.

Registered names, in order: ``mock``, ``anthropic``, ``openai``, ``claude-agent-sdk``. The SDK of a provider is
imported only when that provider is created, so carapace runs without the SDKs; creating
a provider whose SDK is missing raises ``ProviderError`` saying which extra to install.
"""

from __future__ import annotations

from carapace.errors import ProviderError

from ._common import ProviderAPIError
from .base import (
    Message,
    Provider,
    ProviderConfig,
    ProviderFactory,
    ToolCall,
    ToolResult,
    ToolSpec,
    Turn,
    create_provider,
    provider_names,
    register_provider,
)

__all__ = [
    "Message",
    "Provider",
    "ProviderAPIError",
    "ProviderConfig",
    "ProviderFactory",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Turn",
    "create_provider",
    "provider_names",
    "register_provider",
]


def _missing_sdk(exc: ImportError, sdk: str) -> ProviderError | None:
    root = (exc.name or "").split(".")[0]
    if root != sdk:
        return None
    return ProviderError(f"The {sdk} provider needs the {sdk} SDK: pip install 'carapace[{sdk}]'")


def _create_mock(config: ProviderConfig) -> Provider:
    from .mock import MockProvider

    return MockProvider(config)


def _create_anthropic(config: ProviderConfig) -> Provider:
    try:
        from .anthropic_provider import AnthropicProvider
    except ImportError as exc:
        error = _missing_sdk(exc, "anthropic")
        if error is None:
            raise
        raise error from None
    return AnthropicProvider(config)


def _create_openai(config: ProviderConfig) -> Provider:
    try:
        from .openai_provider import OpenAIProvider
    except ImportError as exc:
        error = _missing_sdk(exc, "openai")
        if error is None:
            raise
        raise error from None
    return OpenAIProvider(config)


def _create_claude_agent_sdk(config: ProviderConfig) -> Provider:
    try:
        from .claude_sdk import ClaudeAgentProvider
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "claude_agent_sdk":
            raise
        raise ProviderError("The claude-agent-sdk provider needs the Claude Agent SDK: "
                            "pip install 'carapace[claude]'") from None  # fmt: skip
    return ClaudeAgentProvider(config)


register_provider("mock", _create_mock)
register_provider("anthropic", _create_anthropic)
register_provider("openai", _create_openai)
register_provider("claude-agent-sdk", _create_claude_agent_sdk)
