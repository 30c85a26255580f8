"""Model providers behind one seam (see ``base``), with the built-ins registered.

Registered names, in order: ``mock``, ``anthropic`` (the Messages API with carapace's tool
loop), ``openai``, ``claude`` (NanoClaw's name: the Claude Agent SDK, Claude Code running the
turn; ``claude-agent-sdk`` is accepted as an alias, ``PROVIDER_ALIASES``). The SDK of a
provider is imported only when that provider is created, so carapace runs without the SDKs;
creating a provider whose SDK is missing raises ``ProviderError`` saying which extra to
install, and ``unavailable_reason`` says the same without creating one (``carapace doctor``).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from carapace.errors import ProviderError

from ._common import ProviderAPIError
from .base import (
    PROVIDER_ALIASES,
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
    "PROVIDER_ALIASES",
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
    "unavailable_reason",
]

# the package each provider's SDK is imported as, and the extra that installs it
_SDKS = {"anthropic": ("anthropic", "anthropic"), "openai": ("openai", "openai"),
         "claude": ("claude_agent_sdk", "claude")}  # fmt: skip


# Packages an SDK only offers (a transport the runner never uses: it speaks httpx to the
# host's credential proxy), kept out of a provider's import (issue 19): the anthropic and
# openai SDKs import aiohttp whenever it is installed (carapace's host needs it), ~250 ms of
# the anthropic SDK's ~1.7 s import in every runner start and ~100 of openai's ~650.
UNUSED_BY_SDKS = ("aiohttp",)


def import_lean(name: str) -> ModuleType:
    """Import the module ``name`` (a provider and its SDK) with ``UNUSED_BY_SDKS`` not
    importable (``None`` in ``sys.modules``: an optional import of them fails, and the SDK
    goes without). Should the SDK need one of them after all (an ``ImportError`` naming
    it), what that attempt imported is dropped and the import runs again with them
    importable. Afterwards they are importable."""
    blocked = [m for m in UNUSED_BY_SDKS if m not in sys.modules]
    before = set(sys.modules)
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in blocked:
            raise
        for m in set(sys.modules) - before:  # half-made modules: imported afresh below
            del sys.modules[m]
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return importlib.import_module(name)


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
        AnthropicProvider: ProviderFactory = import_lean(
            f"{__name__}.anthropic_provider"
        ).AnthropicProvider
    except ImportError as exc:
        error = _missing_sdk(exc, "anthropic")
        if error is None:
            raise
        raise error from None
    return AnthropicProvider(config)


def _create_openai(config: ProviderConfig) -> Provider:
    try:
        OpenAIProvider: ProviderFactory = import_lean(f"{__name__}.openai_provider").OpenAIProvider
    except ImportError as exc:
        error = _missing_sdk(exc, "openai")
        if error is None:
            raise
        raise error from None
    return OpenAIProvider(config)


CLAUDE_SDK_MISSING = ("The claude provider (the Claude Agent SDK) needs the claude-agent-sdk "
                      "package: pip install 'carapace[claude]' (or switch the group to "
                      "the anthropic provider)")  # fmt: skip


def _create_claude(config: ProviderConfig) -> Provider:
    try:
        ClaudeAgentProvider: ProviderFactory = import_lean(
            f"{__name__}.claude_sdk"
        ).ClaudeAgentProvider
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "claude_agent_sdk":
            raise
        raise ProviderError(CLAUDE_SDK_MISSING) from None
    return ClaudeAgentProvider(config)


def unavailable_reason(name: str) -> str | None:
    """Why provider ``name`` (any accepted spelling) cannot be created here, judged by
    whether its SDK package is installed; None when it can (or the name is unknown)."""
    import importlib.util

    key = name.strip().lower()
    key = PROVIDER_ALIASES.get(key, key)
    sdk = _SDKS.get(key)
    if sdk is None:
        return None
    spec = importlib.util.find_spec(sdk[0])
    if spec is None:
        if key == "claude":
            return CLAUDE_SDK_MISSING
        return f"The {key} provider needs the {sdk[0]} SDK: pip install 'carapace[{sdk[1]}]'"
    if key == "claude" and spec.origin:  # the CLI it runs comes inside the package
        import os

        cli = os.path.join(os.path.dirname(spec.origin), "_bundled", "claude")
        if not os.access(cli, os.X_OK):
            return (f"The claude provider's bundled Claude Code CLI is missing or not "
                    f"executable ({cli}): reinstall claude-agent-sdk")  # fmt: skip
    return None


register_provider("mock", _create_mock)
register_provider("anthropic", _create_anthropic)
register_provider("openai", _create_openai)
register_provider("claude", _create_claude)
