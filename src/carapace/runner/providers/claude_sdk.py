"""The Claude Agent SDK provider (``claude-agent-sdk``): Claude Code runs the whole turn.

Unlike the other providers (one model call per ``complete``), this one hands a turn to the
``claude-agent-sdk`` package, whose bundled Claude Code CLI runs the tool loop itself
(``run_agent_turn``; ``Agent`` delegates to it). What it is given:

* carapace's tools — the messaging tools, the workspace tools (with the group's bash, web
  and file policy) and the group's MCP servers' tools — as one in-process SDK MCP server
  ``carapace`` (the model sees ``mcp__carapace__<tool>``). Claude Code's own built-in tools
  are all switched off (``tools=[]``): the workspace tools enforce carapace's policies and
  Claude Code's do not;
* carapace's composed system prompt (it already holds ``CLAUDE.local.md``, the composed
  ``CLAUDE.md`` fragments, global memory and destinations); Claude Code loads no settings
  or memory files of its own (``setting_sources=[]``);
* model traffic: through the host's egress proxy when there is one (a loopback relay in the
  runner, since the CLI speaks TCP: ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>/anthropic``
  and a placeholder key — the host adds the real one), else ``ANTHROPIC_BASE_URL`` /
  ``ANTHROPIC_API_KEY`` of the runner's environment (unsandboxed development);
* its session: the SDK's session id is kept in the conversation (``sdk_session_id`` on the
  assistant message) and resumed on the next turn, also after a runner restart (Claude
  Code's files live in ``<group folder>/.claude-sdk``, ``CLAUDE_CONFIG_DIR``).

The CLI runs as a child of the runner, so inside the runner's sandbox. It refuses
``bypassPermissions`` as root, so the permission mode is ``default`` with every carapace
tool allowed by name. When the bundled CLI is missing or cannot run here, creating the
provider fails with the reason (each message then gets "the model provider failed: …").
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carapace.errors import ProviderError
from carapace.unixsock import forward_loopback

from ._common import PLACEHOLDER_KEY, env, first_set, one_line, proxy_socket
from .base import Message, ProviderConfig, ToolSpec, Turn

if TYPE_CHECKING:
    from carapace.runner.tools import ToolBox

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-6"
SERVER = "carapace"
SESSION_KEY = "sdk_session_id"


def bundled_cli() -> Path:
    import claude_agent_sdk

    return Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"


class ClaudeAgentProvider:
    name: str = "claude-agent-sdk"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = config.model or DEFAULT_MODEL
        cli = bundled_cli()
        try:
            out = subprocess.run([str(cli), "--version"], capture_output=True, text=True,
                                 timeout=30, check=True)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProviderError(f"the Claude Agent SDK's bundled Claude Code CLI cannot run "
                                f"here ({cli}): {one_line(str(exc))}") from None  # fmt: skip
        self.cli_version = out.stdout.strip()
        self._relay_port: int | None = None

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        raise ProviderError("the claude-agent-sdk provider runs whole turns (run_agent_turn)")

    # --- one turn ------------------------------------------------------------------------
    def run_agent_turn(
        self, system: str, prompt: str, toolbox: ToolBox, conversation: list[Message]
    ) -> tuple[str, str | None]:
        """Run one turn; returns the final text and the SDK session id to resume next."""
        import anyio

        resume = next((m.get(SESSION_KEY) for m in reversed(conversation)
                       if m.get("role") == "assistant" and m.get(SESSION_KEY)), None)  # fmt: skip
        return anyio.run(self._turn, system, prompt, toolbox, resume)

    async def _turn(
        self, system: str, prompt: str, toolbox: ToolBox, resume: Any
    ) -> tuple[str, str | None]:
        from claude_agent_sdk import (
            ClaudeAgentOptions,
            ClaudeSDKError,
            ResultMessage,
            SdkMcpTool,
            create_sdk_mcp_server,
            query,
        )

        specs = toolbox.specs()

        def handler_for(spec: ToolSpec) -> Any:
            async def handler(args: dict[str, Any]) -> dict[str, Any]:
                result = toolbox.call(spec.name, args)  # on this thread: the runner's DBs
                content: list[dict[str, Any]] = [{"type": "text", "text": result.content}]
                for image in result.images:
                    content.append({"type": "image", "data": image["data"],
                                    "mimeType": image["media_type"]})  # fmt: skip
                return {"content": content, "is_error": result.is_error}

            return handler

        tools = [SdkMcpTool(name=s.name, description=s.description, input_schema=s.input_schema,
                            handler=handler_for(s)) for s in specs]  # fmt: skip
        server = create_sdk_mcp_server(name=SERVER, version="1.0.0", tools=tools)
        agent_dir = Path(self.config.agent_dir or os.getcwd())
        options = ClaudeAgentOptions(
            cwd=str(agent_dir), model=self.model, system_prompt=system, tools=[],
            mcp_servers={SERVER: server},
            allowed_tools=[f"mcp__{SERVER}__{s.name}" for s in specs],
            permission_mode="default", setting_sources=[], resume=resume if isinstance(resume, str) else None,
            env=self._env(agent_dir), cli_path=str(bundled_cli()),
            stderr=lambda line: logger.info("claude-code: %s", line[:500]),
        )  # fmt: skip
        text, session_id = "", None
        try:
            async for message in query(prompt=prompt, options=options):
                session_id = getattr(message, "session_id", None) or session_id
                if isinstance(message, ResultMessage):
                    if message.is_error:
                        raise ProviderError(f"Claude Code: {one_line(str(message.result))}")
                    text = message.result or ""
        except ClaudeSDKError as exc:
            raise ProviderError(f"Claude Agent SDK: {one_line(str(exc))}") from None
        return text, session_id

    def _env(self, agent_dir: Path) -> dict[str, str]:
        out = {
            "CLAUDE_CONFIG_DIR": str(agent_dir / ".claude-sdk"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "API_TIMEOUT_MS": str(int(self.config.timeout_s * 1000)),
        }
        sock = proxy_socket()
        if sock is not None:
            out["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{self._relay(sock)}/anthropic"
            out["ANTHROPIC_API_KEY"] = PLACEHOLDER_KEY
            return out
        base = first_set(self.config.base_url, env("ANTHROPIC_BASE_URL"))
        if base:
            out["ANTHROPIC_BASE_URL"] = base
        key = first_set(self.config.api_key, env("ANTHROPIC_API_KEY"))
        if key is None and base is None:
            raise ProviderError("The claude-agent-sdk provider needs the host's proxy, or "
                                "ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL")  # fmt: skip
        out["ANTHROPIC_API_KEY"] = key or PLACEHOLDER_KEY
        return out

    def _relay(self, sock_path: str) -> int:
        """A loopback port relayed to the proxy's unix socket (started once)."""
        if self._relay_port is not None:
            return self._relay_port
        self._relay_port = forward_loopback(sock_path, idle_s=600, name="claude-relay")
        return self._relay_port
