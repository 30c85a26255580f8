"""Helpers shared by the SDK-backed providers: error wording, key redaction, settings."""

from __future__ import annotations

import importlib
import os
import re
from urllib.parse import urlsplit, urlunsplit

from carapace.errors import ProviderError

from .base import Turn

# A stand-in key for endpoints that need none (Ollama, vLLM) or get one injected on the
# way (the host's credential proxy): the SDKs refuse to build a client without a key.
TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any

    from carapace.log import Logger


PLACEHOLDER_KEY = "not-needed"

_MAX_DETAIL = 300
# Key-like tokens that APIs echo back in auth errors, e.g. OpenAI's "sk-proj-****abcd"
# (Anthropic keys start with "sk-ant-").
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")


class ProviderAPIError(ProviderError):
    """The model API answered with an error, or could not be reached.

    ``status_code`` is the HTTP status (``None`` for connection errors and timeouts);
    ``retryable`` is true for timeouts, connection errors, 408, 409, 429 and 5xx.
    """

    def __init__(self, message: str, *, status_code: int | None, retryable: bool) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable


PROXY_SOCKET_ENV = "CARAPACE_PROXY_SOCKET"
PROXY_BASE = "http://carapace-proxy"


def proxy_socket() -> str | None:
    """The host's egress proxy socket, when the host gave one (docs/sandbox.md)."""
    return env(PROXY_SOCKET_ENV)


def proxy_client(provider: str, sdk: Any, timeout_s: float) -> tuple[str, Any] | None:
    """``(base_url, http client)`` reaching the host's proxy for ``provider`` over its unix
    socket, or None when there is no proxy. The client sends no key: the host adds it.

    The client is the SDK's own ``DefaultHttpxClient`` with a transport of the httpx
    package that SDK is built on (``httpx`` or ``httpx2``, whichever it imports)."""
    sock = proxy_socket()
    if sock is None:
        return None
    client_cls = sdk.DefaultHttpxClient
    roots = [c.__module__.split(".")[0] for c in client_cls.__mro__]
    root = next(r for r in roots if r.startswith("httpx"))
    # plain HTTP over the host's socket (PROXY_BASE is http://): TLS never runs in this
    # client, so the CA bundle is not loaded (30-60 ms of a cold start, issue 19); the TLS
    # context it is given trusts nothing, so it would fail closed if ever asked to verify
    import ssl  # (here: the SDK has loaded it already; a mock runner never does)

    nothing_trusted = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    transport = importlib.import_module(root).HTTPTransport(uds=sock, verify=nothing_trusted)
    return f"{PROXY_BASE}/{provider}", client_cls(transport=transport, timeout=timeout_s)


def is_retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def first_set(*values: str | None) -> str | None:
    """The first non-empty value."""
    for value in values:
        if value:
            return value
    return None


def env(name: str) -> str | None:
    return os.environ.get(name) or None


def api_key(configured: str | None, env_name: str, base_url: str | None, missing: str) -> str:
    """The configured key, else env ``env_name``; with neither, the placeholder key when
    there is a base URL (a keyless server or a credential-injecting proxy), else
    ``ProviderError(missing)``."""
    key = first_set(configured, env(env_name))
    if key is None:
        if base_url is None:
            raise ProviderError(missing)
        key = PLACEHOLDER_KEY
    return key


def sdk_error(
    api: str,
    exc: Exception,
    *,
    timeout_error: type[Exception],
    connection_error: type[Exception],
    timeout_s: float,
    base_url: str | None,
    key: str,
) -> ProviderError:
    """The error for an SDK failure other than an HTTP error status: a timeout, an
    unreachable endpoint (both retryable), or anything else. ``api`` names the API in the
    message ("Anthropic", "OpenAI")."""
    if isinstance(exc, timeout_error):
        return ProviderAPIError(
            f"{api} API timed out after {timeout_s:g}s ({safe_url(base_url)})",
            status_code=None,
            retryable=True,
        )
    if isinstance(exc, connection_error):
        cause = exc.__cause__ or exc
        return ProviderAPIError(
            f"{api} API unreachable at {safe_url(base_url)}: {one_line(str(cause), key)}",
            status_code=None,
            retryable=True,
        )
    return ProviderError(f"{api} SDK error ({type(exc).__name__}): {one_line(str(exc), key)}")


def text_of(content: object) -> str:
    """Message content as text (``None`` → empty)."""
    if content is None:
        return ""
    return content if isinstance(content, str) else str(content)


def log_turn(logger: Logger, model: str, turn: Turn) -> None:
    logger.debug(
        "%s: stop=%s tool_calls=%d tokens in=%d out=%d cache read=%d write=%d",
        model,
        turn.stop_reason,
        len(turn.tool_calls),
        turn.input_tokens,
        turn.output_tokens,
        turn.cache_read_tokens,
        turn.cache_write_tokens,
    )


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without any of ``secrets`` and without key-looking tokens."""
    for secret in secrets:
        if secret and secret != PLACEHOLDER_KEY:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub("sk-***", text)


def one_line(text: str, *secrets: str | None) -> str:
    """Collapse whitespace, redact, and cut to a readable length."""
    flat = " ".join(redact(str(text), *secrets).split())
    return flat if len(flat) <= _MAX_DETAIL else flat[: _MAX_DETAIL - 1] + "…"


def safe_url(url: str | None) -> str:
    """``url`` without user info and query (either may carry a credential)."""
    if not url:
        return "(default endpoint)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
