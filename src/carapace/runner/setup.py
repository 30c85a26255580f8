"""Building the runner's provider and workspace from its ``RunnerConfig``.

Both degrade instead of exiting: a provider that cannot be created (unknown name, missing
key or SDK) is replaced by one whose every turn fails with that reason, so each message
gets "Sorry — the model provider failed: …" rather than silence; a workspace that cannot
be built means the agent gets only the messaging tools.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from carapace.errors import CarapaceError
from carapace.runner.config import RunnerConfig
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers.base import Provider

if TYPE_CHECKING:
    from carapace.runner.workspace import Workspace

logger = logging.getLogger(__name__)


def provider_config(config: RunnerConfig) -> ProviderConfig:
    settings = config.settings
    max_tokens = settings.get("max_tokens")
    base_url = settings.get("base_url")
    return ProviderConfig(
        name=config.provider,
        model=config.model,
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 4096,
        base_url=base_url if isinstance(base_url, str) and base_url else None,
        agent_dir=str(config.agent_dir),
    )


def build_provider(config: RunnerConfig) -> tuple[Provider | None, str | None]:
    try:
        return create_provider(provider_config(config)), None
    except (CarapaceError, ImportError, ValueError) as exc:
        logger.error("cannot create provider %s: %s", config.provider, exc)
        return None, str(exc)


def build_workspace(config: RunnerConfig) -> Workspace | None:
    try:
        from carapace.runner.workspace import Workspace, WorkspacePolicy
    except ImportError:
        return None
    settings = config.settings
    bash = settings.get("bash", "off")
    if bash is True:
        bash = "allowed"
    elif bash is False or bash is None:
        bash = "off"
    web = settings.get("web", True)
    global_dir = config.agent_dir.parent / "global"
    tmp = Path(tempfile.mkdtemp(prefix=f"carapace-runner-{config.session_id}-"))
    try:
        return Workspace(
            WorkspacePolicy(
                group_dir=config.agent_dir,
                session_dir=config.session_dir,
                tmp_dir=tmp,
                bash=bash,
                web=bool(web),
                read_only_roots=(global_dir,) if global_dir.is_dir() else (),
            )
        )
    except (CarapaceError, OSError) as exc:
        logger.error("workspace tools disabled: %s", exc)
        return None
