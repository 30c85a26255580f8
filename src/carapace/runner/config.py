"""The runner's configuration: command line, ``<agent-dir>/container.json`` and environment.

``container.json`` is what the host materialises from ``container_configs``
(``ContainerConfig.to_json()``): ``provider``, ``model``, ``assistantName``,
``maxMessagesPerPrompt``, ``settings{...}`` and more. Unreadable or malformed files mean
defaults (NanoClaw logs and goes on). Credentials never come from the file: the providers
read ``ANTHROPIC_API_KEY``/``OPENAI_API_KEY`` and base URLs from the environment, or a
``base_url`` from ``settings``. The runner's ``settings`` keys are parsed once into
``agent_settings`` (``settings.py``, documented in ``docs/agent-settings.md``); ``sandboxed``
says whether the host started this runner in a sandbox (``CARAPACE_SANDBOX``).

Provider choice: ``--provider`` (the host's per-session override, spec W-20), else
``container.json`` ``provider`` (``claude`` is NanoClaw's Claude Agent SDK provider, also
spelled ``claude-agent-sdk``; ``anthropic`` is the Messages API loop), else the first
provider whose key is in the environment, else ``mock``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from carapace.db.session import SessionPaths
from carapace.log import get_logger
from carapace.record import field, record
from carapace.runner.preview import stream_channels
from carapace.runner.providers.base import PROVIDER_ALIASES as PROVIDER_ALIASES
from carapace.runner.settings import AgentSettings, is_sandboxed

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


logger = get_logger(__name__)

DEFAULT_MAX_MESSAGES = 10
DEFAULT_MAX_TOOL_ROUNDS = 25
DEFAULT_QUESTION_TIMEOUT_S = 300
DEFAULT_HISTORY_MESSAGES = 200


def resolve_timezone(name: str | None) -> str:
    """``name`` if it is a valid IANA zone, else ``UTC`` (spec §6.9)."""
    if not name or name in ("localtime", "posixrules", "UTC"):
        return "UTC"
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # here: not at start for UTC

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        logger.warning("invalid time zone %r, using UTC", name)
        return "UTC"
    return name


def read_container_json(agent_dir: Path) -> dict[str, Any]:
    path = agent_dir / "container.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("Failed to read %s (%s), using defaults", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def default_provider(environ: dict[str, str] | os._Environ[str]) -> str:
    if environ.get("ANTHROPIC_API_KEY") or environ.get("ANTHROPIC_BASE_URL"):
        return "anthropic"
    if environ.get("OPENAI_API_KEY") or environ.get("OPENAI_BASE_URL"):
        return "openai"
    return "mock"


@record(frozen=True)
class RunnerConfig:
    session_dir: Path
    agent_dir: Path
    provider: str = "mock"
    model: str | None = None
    assistant_name: str = ""
    max_messages_per_prompt: int = DEFAULT_MAX_MESSAGES
    timezone: str = "UTC"
    idle_exit_s: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    history_messages: int = DEFAULT_HISTORY_MESSAGES
    poll_interval_s: float = 5.0  # safety poll even with inotify
    agent_settings: AgentSettings = field(default_factory=AgentSettings)  # parsed ``settings``
    sandboxed: bool = False  # CARAPACE_SANDBOX is set: the host started us in a sandbox
    cli_scope: str = "group"  # container.json ``cliScope``: disabled | group | global
    # channel types the host shows replies on as they are written (runner/preview.py)
    stream_channels: frozenset[str] = frozenset()

    @property
    def paths(self) -> SessionPaths:
        return SessionPaths(self.session_dir)

    @property
    def session_id(self) -> str:
        return self.session_dir.name

    @classmethod
    def load(
        cls,
        session_dir: Path,
        agent_dir: Path,
        *,
        provider: str | None = None,
        idle_exit_s: float | None = None,
        environ: dict[str, str] | None = None,
    ) -> RunnerConfig:
        env = environ if environ is not None else dict(os.environ)
        data = read_container_json(agent_dir)
        settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
        name = provider or _str(data.get("provider")) or default_provider(env)
        name = name.lower()
        name = PROVIDER_ALIASES.get(name, name)
        max_msgs = data.get("maxMessagesPerPrompt")
        if not isinstance(max_msgs, int) or isinstance(max_msgs, bool) or max_msgs <= 0:
            max_msgs = DEFAULT_MAX_MESSAGES
        agent_settings = AgentSettings.parse(settings)
        return cls(
            session_dir=session_dir,
            agent_dir=agent_dir,
            provider=name,
            model=_str(data.get("model")),
            assistant_name=_str(data.get("assistantName")) or "",
            max_messages_per_prompt=max_msgs,
            timezone=resolve_timezone(env.get("CARAPACE_TZ")),
            idle_exit_s=idle_exit_s,
            settings=dict(settings or {}),
            max_tool_rounds=agent_settings.max_tool_rounds,
            agent_settings=agent_settings,
            sandboxed=is_sandboxed(env),
            cli_scope=_str(data.get("cliScope")) or "group",
            stream_channels=stream_channels(env),
        )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
