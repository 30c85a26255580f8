"""Per-group agent settings: the ``settings`` object of ``container.json``, parsed once.

The host materialises ``container.json`` from the group's ``container_configs`` row before
every spawn, so a change (``carapace admin groups config update --settings …``) takes
effect at the next runner start. Top-level ``provider`` and ``model`` sit next to
``settings``; everything else the runner reads is in it (``docs/agent-settings.md``):

==========================  =======================  ======================================
key                         default                  meaning
==========================  =======================  ======================================
``max_tokens``              4096                     output tokens per model call
``base_url``                (provider default)       the model API endpoint
``context_limit_tokens``    100000                   compaction threshold (≈4 chars/token)
``context_limit_chars``     (from tokens)            the same threshold in characters
``tools``                   ``"all"``                workspace tools: ``"all"``, ``"none"``
                                                     or a list of tool names
``bash``                    ``"sandboxed"``          ``off`` / ``sandboxed`` (= ``auto``) /
                                                     ``allowed`` (``true`` = ``allowed``)
``web``                     ``true``                 ``web_fetch`` on/off
``web_private``             ``false``                let ``web_fetch`` reach loopback and
                                                     private-network addresses
``max_tool_rounds``         25                       tool rounds per turn
``bash_timeout_s``          120                      default bash timeout
``model_timeout_s``         120                      one model call's timeout (0 < s ≤ 3600)
``images``                  ``true``                 send images a person attached to models
                                                     that take them (``false``: describe them)
==========================  =======================  ======================================

``bash``: ``sandboxed`` runs commands only when the runner itself is sandboxed — the
host's bwrap backend sets ``CARAPACE_SANDBOX=bwrap`` for the runners it starts (and
``none`` for unisolated ones);
``allowed`` is the operator's explicit opt-in to run them even unsandboxed (``carapace
doctor`` warns about it). Bad values are logged and replaced by the default (the runner
never refuses to start over a setting); ``validate_settings`` reports them up front for
the admin CLI. Other keys (e.g. ``runner_backend``) belong to the host and are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from carapace.log import get_logger
from carapace.record import record

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any, Literal

    BashSetting = Literal["off", "sandboxed", "allowed"]


logger = get_logger(__name__)

SANDBOX_ENV = "CARAPACE_SANDBOX"
# Values meaning "no sandbox"; the host's subprocess backend sets ``none`` explicitly.
NOT_SANDBOXED = frozenset({"", "none", "subprocess", "0", "false", "no", "off"})
CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 4096
DEFAULT_CONTEXT_TOKENS = 100_000
DEFAULT_MAX_TOOL_ROUNDS = 25
DEFAULT_BASH_TIMEOUT_S = 120.0
DEFAULT_MODEL_TIMEOUT_S = 120.0
MIN_CONTEXT_CHARS = 200
WORKSPACE_TOOL_NAMES = (
    "bash",
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "grep",
    "web_fetch",
)
BASH_VALUES: dict[object, BashSetting] = {
    "off": "off",
    False: "off",
    None: "off",
    "sandboxed": "sandboxed",
    "auto": "sandboxed",
    "allowed": "allowed",
    True: "allowed",
}
RUNNER_KEYS = (
    "max_tokens",
    "base_url",
    "context_limit_tokens",
    "context_limit_chars",
    "tools",
    "bash",
    "web",
    "web_private",
    "max_tool_rounds",
    "bash_timeout_s",
    "model_timeout_s",
    "images",
)


@record(frozen=True)
class AgentSettings:
    max_tokens: int = DEFAULT_MAX_TOKENS
    base_url: str | None = None
    context_limit_chars: int = DEFAULT_CONTEXT_TOKENS * CHARS_PER_TOKEN
    tools: frozenset[str] = frozenset(WORKSPACE_TOOL_NAMES)
    bash: BashSetting = "sandboxed"
    web: bool = True
    web_private: bool = False
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    bash_timeout_s: float = DEFAULT_BASH_TIMEOUT_S
    model_timeout_s: float = DEFAULT_MODEL_TIMEOUT_S
    images: bool = True

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> AgentSettings:
        """Parse a ``settings`` object; bad values are logged and defaulted."""
        values, errors = _parse(settings or {})
        for error in errors:
            logger.warning("container.json settings: %s; using the default", error)
        return cls(**values)

    def bash_mode(self, sandboxed: bool) -> tuple[Literal["off", "sandboxed", "allowed"], str]:
        """The workspace's effective bash mode and, when off, why (shown to the agent)."""
        if "bash" not in self.tools:
            return "off", "tools"
        if self.bash == "allowed":
            return "allowed", ""
        if self.bash == "sandboxed":
            return ("sandboxed", "") if sandboxed else ("off", "not-sandboxed")
        return "off", "setting"


def is_sandboxed(environ: Mapping[str, str] | None = None) -> bool:
    """True when the host started this runner inside a sandbox (``CARAPACE_SANDBOX``)."""
    env = os.environ if environ is None else environ
    return env.get(SANDBOX_ENV, "").strip().lower() not in NOT_SANDBOXED


def validate_settings(settings: Mapping[str, Any]) -> list[str]:
    """Human-readable problems with the runner's keys of a ``settings`` object."""
    return _parse(settings)[1]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse(s: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key in ("max_tokens", "max_tool_rounds"):
        if key in s:
            if _positive_int(s[key]):
                out[key] = s[key]
            else:
                errors.append(f"{key} must be a positive integer, not {s[key]!r}")
    if "base_url" in s and s["base_url"] is not None:
        if isinstance(s["base_url"], str) and s["base_url"].startswith(("http://", "https://")):
            out["base_url"] = s["base_url"]
        else:
            errors.append(f"base_url must be an http(s) URL, not {s['base_url']!r}")
    for key, factor in (("context_limit_chars", 1), ("context_limit_tokens", CHARS_PER_TOKEN)):
        if key in s and "context_limit_chars" not in out:
            if _positive_int(s[key]) and s[key] * factor >= MIN_CONTEXT_CHARS:
                out["context_limit_chars"] = s[key] * factor
            else:
                errors.append(f"{key} must be an integer ≥ {MIN_CONTEXT_CHARS // factor}")
    if "tools" in s:
        tools = _parse_tools(s["tools"])
        if isinstance(tools, str):
            errors.append(tools)
        else:
            out["tools"] = tools
    if "bash" in s:
        value = s["bash"]
        mode = BASH_VALUES.get(value) if isinstance(value, str | bool) or value is None else None
        if mode is None:
            errors.append(f"bash must be off, sandboxed, auto or allowed, not {value!r}")
        else:
            out["bash"] = mode
    for key in ("web", "web_private", "images"):
        if key in s:
            if isinstance(s[key], bool):
                out[key] = s[key]
            else:
                errors.append(f"{key} must be true or false, not {s[key]!r}")
    if "model_timeout_s" in s:
        t = s["model_timeout_s"]
        if isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 3600:
            out["model_timeout_s"] = float(t)
        else:
            errors.append(f"model_timeout_s must be a number of seconds in (0, 3600], not {t!r}")
    if "bash_timeout_s" in s:
        t = s["bash_timeout_s"]
        if isinstance(t, int | float) and not isinstance(t, bool) and t > 0:
            out["bash_timeout_s"] = float(t)
        else:
            errors.append(f"bash_timeout_s must be a positive number, not {t!r}")
    return out, errors


def _parse_tools(value: object) -> frozenset[str] | str:
    if value == "all" or value is True:
        return frozenset(WORKSPACE_TOOL_NAMES)
    if value == "none" or value is False:
        return frozenset()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        unknown = sorted(set(value) - set(WORKSPACE_TOOL_NAMES))
        if unknown:
            known = ", ".join(WORKSPACE_TOOL_NAMES)
            return f"tools: unknown tool(s) {', '.join(unknown)} (known: {known})"
        return frozenset(value)
    return f'tools must be "all", "none" or a list of tool names, not {value!r}'
