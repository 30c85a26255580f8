"""Building the runner's provider and workspace from its ``RunnerConfig``.

Both degrade instead of exiting: a provider that cannot be created (unknown name, missing
key or SDK) is replaced by one whose every turn fails with that reason, so each message
gets "Sorry — the model provider failed: …" rather than silence; a workspace that cannot
be built means the agent gets only the messaging tools.
"""

from __future__ import annotations

import os
from pathlib import Path

from carapace.errors import CarapaceError
from carapace.limits import limits_of
from carapace.log import get_logger
from carapace.runner.config import RunnerConfig
from carapace.runner.providers import ProviderConfig, create_provider
from carapace.runner.providers._common import proxy_socket
from carapace.runner.providers.base import Provider
from carapace.runner.workspace_specs import bash_refusal

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from carapace.runner.mcp_client import McpHub
    from carapace.runner.workspace import Workspace

logger = get_logger(__name__)


def provider_config(config: RunnerConfig) -> ProviderConfig:
    agent = config.agent_settings
    process = limits_of(config.settings)
    return ProviderConfig(
        name=config.provider,
        model=config.model,
        max_tokens=agent.max_tokens,
        base_url=agent.base_url,
        timeout_s=agent.model_timeout_s,
        agent_dir=str(config.agent_dir),
        # the claude provider's Bash gets the workspace bash's timeouts
        extra={
            "bash_timeout_s": min(agent.bash_timeout_s, process.tool_timeout_s),
            "bash_max_timeout_s": float(process.tool_timeout_s),
        },
    )


def build_provider(config: RunnerConfig) -> tuple[Provider | None, str | None]:
    try:
        return create_provider(provider_config(config)), None
    except (CarapaceError, ImportError, ValueError) as exc:
        logger.error("cannot create provider %s: %s", config.provider, exc)
        return None, str(exc)


def build_mcp(config: RunnerConfig) -> McpHub | None:
    """The group's MCP servers (``container.json`` ``mcpServers``), started in the background;
    None when there are none or the ``mcp`` package is missing (logged)."""
    from carapace.runner.config import read_container_json

    raw = read_container_json(config.agent_dir).get("mcpServers")
    if not raw:
        return None
    try:
        from carapace.runner.mcp_client import McpHub
        from carapace.runner.mcp_config import parse_servers
    except ImportError as exc:
        logger.error("MCP servers configured but the mcp package is missing (%s): "
                     "pip install 'carapace[mcp]'", exc)  # fmt: skip
        return None
    servers, problems = parse_servers(raw)
    for problem in problems:
        logger.error("%s: skipped", problem)
    if not servers:
        return None
    hub = McpHub(servers, cwd=config.agent_dir, proxy_socket=proxy_socket(),
                 call_timeout_s=float(limits_of(config.settings).tool_timeout_s))  # fmt: skip
    hub.start()
    return hub


def private_tmp_dir(prefix: str) -> Path:
    """``tempfile.mkdtemp(prefix=prefix)`` without importing ``tempfile`` at the runner's
    start (issue 19): a new owner-only folder in ``$TMPDIR`` (or ``$TEMP``, ``$TMP``,
    ``/tmp``, tempfile's own order); ``tempfile`` itself when none of those takes it."""
    for base in (*(os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")), "/tmp"):
        if not base:
            continue
        for _ in range(8):
            path = os.path.abspath(os.path.join(base, prefix + os.urandom(6).hex()))
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError:
                break
            return Path(path)
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def build_workspace(config: RunnerConfig) -> Workspace | None:
    try:
        from carapace.runner.workspace import Workspace, WorkspaceLimits, WorkspacePolicy
    except ImportError:
        return None
    agent = config.agent_settings
    bash, why_off = agent.bash_mode(config.sandboxed)
    process = limits_of(config.settings)
    limits = WorkspaceLimits(
        bash_timeout_s=min(agent.bash_timeout_s, process.tool_timeout_s),
        bash_max_timeout_s=process.tool_timeout_s,
        process=process,
    )
    global_dir = config.agent_dir.parent / "global"
    tmp = private_tmp_dir(f"carapace-runner-{config.session_id}-")
    try:
        return Workspace(
            WorkspacePolicy(
                group_dir=config.agent_dir,
                session_dir=config.session_dir,
                tmp_dir=tmp,
                bash=bash,
                web=agent.web and "web_fetch" in agent.tools,
                web_private=agent.web_private,
                read_only_roots=(global_dir,) if global_dir.is_dir() else (),
                limits=limits,
                tools=agent.tools,
                bash_refusal=bash_refusal(why_off, agent.bash),
            )
        )
    except (CarapaceError, OSError) as exc:
        logger.error("workspace tools disabled: %s", exc)
        return None
