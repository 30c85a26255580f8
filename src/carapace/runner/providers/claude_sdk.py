"""The Claude Agent SDK provider (``claude``, NanoClaw's name; also ``claude-agent-sdk``):
Claude Code runs the whole turn.

Unlike the other providers (one model call per ``complete``), this one hands a turn to the
``claude-agent-sdk`` package, whose bundled Claude Code CLI runs the tool loop itself
(``run_agent_turn``; ``Agent`` delegates to it). What it is given:

* Claude Code's own ``Bash``, ``Read``, ``Write``, ``Edit``, ``Glob`` and ``Grep``, each when
  the group's settings enable its carapace counterpart, every call checked by carapace's
  workspace policy first (``claude_tools.py``: a ``PreToolUse`` hook and ``can_use_tool``);
* carapace's messaging tools and ``web_fetch`` as the in-process SDK MCP server ``carapace``
  (``mcp__carapace__<tool>``), and each of the group's MCP servers (run by carapace's
  client) as an in-process server of its own name: NanoClaw's ``mcp__<server>__<tool>``;
* the group folder as its working folder with the ``project`` and ``local`` setting
  sources, so Claude Code reads ``CLAUDE.md`` (the host's composed file and its imports) and
  ``CLAUDE.local.md`` itself, as it does in NanoClaw; carapace's system prompt then leaves
  those files out (``loads_memory_files``). ``.claude/`` in the group folder, where Claude
  Code would read hooks and permissions, is never written by tools and is an empty
  read-only folder in the bwrap sandbox; only carapace's MCP server is used
  (``strict_mcp_config``);
* model traffic: through the host's egress proxy when there is one (a loopback relay in the
  runner, since the CLI speaks TCP: ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>/anthropic``
  and a placeholder key — the host adds the real one), else ``ANTHROPIC_BASE_URL`` /
  ``ANTHROPIC_API_KEY`` of the runner's environment (unsandboxed development);
* its session: the SDK's session id is kept in the conversation (``sdk_session_id`` on the
  assistant message) and resumed on the next turn, also after a runner restart (Claude
  Code's files live in ``<group folder>/.claude-sdk``, ``CLAUDE_CONFIG_DIR``); a session
  whose files are gone is replaced by a new one (logged);
* images a person sent with the batch, as image blocks of the turn's user message;
* the group's ``max_tokens`` as Claude Code's output limit. Claude Code continues a reply cut
  there by itself; the delivered text is every piece of it (its result holds only the
  last), and a reply it gave up on is delivered marked incomplete.

The CLI runs as a child of the runner, so inside the runner's sandbox. It refuses
``bypassPermissions`` as root, so the permission mode is ``default`` with carapace's own
tools allowed by name and Claude Code's decided by the policy. When the bundled CLI is
missing or cannot run here, creating the provider fails with the reason (each message then
gets "the model provider failed: …").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import claude_agent_sdk

from carapace.errors import ProviderError
from carapace.log import get_logger
from carapace.unixsock import forward_loopback

from ._common import PLACEHOLDER_KEY, env, first_set, one_line, proxy_socket
from .base import Message, ProviderConfig, ToolSpec, Turn
from .claude_tools import PROMPT_NAMES, REPLACED, ClaudeToolPolicy

if TYPE_CHECKING:
    from carapace.runner.tools import ToolBox

logger = get_logger(__name__)
# The SDK warns that can_use_tool is not asked about the tools allowed by name: carapace's
# own, which check their calls where they run (as for every provider). Expected, not news.
warnings.filterwarnings("ignore", message="can_use_tool will not be invoked for")

DEFAULT_MODEL = "claude-sonnet-4-6"
SERVER = "carapace"
SESSION_KEY = "sdk_session_id"
SESSION_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
LOST_SESSION = "No conversation found with session ID"  # Claude Code's words
CUT_NOTE = "(This reply is incomplete: the model hit its output token limit.)"
OUTPUT_LIMIT = "output token maximum"  # in Claude Code's error when it stops continuing
# Variables a settings file's ``env`` could use to send model traffic (and the key)
# elsewhere: pinned on Claude Code's command line, above every settings file
PINNED_ENV = ("ANTHROPIC_BASE_URL", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy",
              "ALL_PROXY", "NODE_TLS_REJECT_UNAUTHORIZED", "NODE_OPTIONS",
              "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX")  # fmt: skip


def flag_settings(child_env: Mapping[str, str]) -> str:
    """Claude Code's command-line settings, above any settings file: no shell-command hooks
    from any settings file run (carapace's in-process hooks are not settings hooks and still
    do), no ``apiKeyHelper`` command, and the traffic-routing variables are ours. No secret
    goes here (the key stays in the environment)."""
    env = {name: child_env.get(name, os.environ.get(name, "")) for name in PINNED_ENV}
    env["NODE_TLS_REJECT_UNAUTHORIZED"] = "1"
    return json.dumps({"disableAllHooks": True, "apiKeyHelper": "", "env": env})


def bundled_cli() -> Path:
    return Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"


class ClaudeAgentProvider:
    name: str = "claude"
    loads_memory_files = True  # Claude Code reads CLAUDE.md / CLAUDE.local.md itself
    prompt_tool_names = PROMPT_NAMES  # how the system prompt names the workspace tools
    takes_images = True
    streams_turns = True  # run_agent_turn's on_text: Claude Code's partial messages

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
        raise ProviderError("the claude provider runs whole turns (run_agent_turn)")

    # --- one turn ------------------------------------------------------------------------
    def run_agent_turn(
        self,
        system: str,
        prompt: str,
        toolbox: ToolBox,
        conversation: list[Message],
        images: Sequence[Mapping[str, str]] = (),
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[str, str | None]:
        """Run one turn; returns the final text and the SDK session id to resume next.
        ``on_text``: the reply's text so far, from Claude Code's partial messages (the
        text after its last tool call, as the returned text is)."""
        import anyio

        resume = next((m.get(SESSION_KEY) for m in reversed(conversation)
                       if m.get("role") == "assistant" and m.get(SESSION_KEY)), None)  # fmt: skip
        # stored in outbound.db, which commands in the sandbox can write: only a plain id
        # goes on Claude Code's command line
        resume = resume if isinstance(resume, str) and SESSION_ID.fullmatch(resume) else None
        try:
            return anyio.run(self._turn, system, prompt, toolbox, resume, list(images), on_text)
        except ProviderError as exc:
            if resume is None or LOST_SESSION not in str(exc):
                raise
        # Claude Code's session files are gone (folder wiped, restored from a backup): a new
        # SDK session, rather than failing every message from now on
        logger.warning("Claude Code session %s not found; starting a new one", resume)
        return anyio.run(self._turn, system, prompt, toolbox, None, list(images), on_text)

    async def _turn(
        self,
        system: str,
        prompt: str,
        toolbox: ToolBox,
        resume: str | None,
        images: list[Mapping[str, str]],
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[str, str | None]:
        from claude_agent_sdk import (
            AssistantMessage,
            ClaudeSDKError,
            ResultMessage,
            TextBlock,
            ToolUseBlock,
            query,
        )
        from claude_agent_sdk.types import StreamEvent

        agent_dir = Path(self.config.agent_dir or os.getcwd())
        child_env = self._env(agent_dir)
        key_in_env = child_env.get("ANTHROPIC_API_KEY", PLACEHOLDER_KEY) != PLACEHOLDER_KEY
        policy = ClaudeToolPolicy(toolbox.workspace, key_in_env=key_in_env)
        options = self._options(system, toolbox, policy, resume, agent_dir, child_env)
        options.include_partial_messages = on_text is not None
        current = ""  # the text of the model message being streamed
        text, session_id = "", None
        # the text of the assistant messages since the last tool call: Claude Code continues
        # a reply cut by max_tokens in a new message, and its result holds only the last one
        tail: list[str] = []
        try:
            async for message in query(prompt=_prompt_stream(prompt, images), options=options):
                session_id = getattr(message, "session_id", None) or session_id
                if isinstance(message, StreamEvent) and message.parent_tool_use_id is None:
                    current = _streamed(message.event, current)
                    if on_text is not None and current:
                        on_text("".join(tail) + current)
                if isinstance(message, AssistantMessage) and message.parent_tool_use_id is None:
                    current = ""
                    if any(isinstance(b, ToolUseBlock) for b in message.content):
                        tail = []
                    else:
                        tail += [b.text for b in message.content if isinstance(b, TextBlock)]
                if isinstance(message, ResultMessage):
                    result = str(message.result or "")
                    written = "".join(tail)
                    if OUTPUT_LIMIT in result:  # Claude Code gave up continuing a cut reply
                        written = written.removesuffix(result)
                        if not written.strip():
                            raise ProviderError(f"Claude Code: {one_line(result)}")
                        return f"{written}\n\n{CUT_NOTE}".strip(), session_id
                    if message.is_error:
                        raise ProviderError(f"Claude Code: {one_line(result)}")
                    text = _final_text(written, result)
                    if message.stop_reason == "max_tokens":  # never delivered as complete
                        text = f"{text}\n\n{CUT_NOTE}".strip()
        except ClaudeSDKError as exc:
            raise ProviderError(f"Claude Agent SDK: {one_line(str(exc))}") from None
        return text, session_id

    def _options(
        self,
        system: str,
        toolbox: ToolBox,
        policy: ClaudeToolPolicy,
        resume: str | None,
        agent_dir: Path,
        child_env: dict[str, str],
    ) -> Any:
        from claude_agent_sdk import (
            ClaudeAgentOptions,
            HookMatcher,
            PermissionResultAllow,
            PermissionResultDeny,
            SdkMcpTool,
            create_sdk_mcp_server,
        )

        # the group's MCP servers keep their NanoClaw names, mcp__<server>__<tool>: each is
        # handed over as its own in-process server; the rest of carapace's tools are one
        servers: dict[str, list[tuple[str, ToolSpec]]] = {}
        hub_tools: set[str] = set()
        if toolbox.mcp is not None:
            for server, server_specs in toolbox.mcp.by_server().items():
                prefix = f"mcp__{server}__"
                if server == SERVER:
                    continue  # a server named like carapace's own: its tools stay in it
                servers[server] = [(s.name[len(prefix):], s) for s in server_specs
                                   if s.name.startswith(prefix)]  # fmt: skip
                hub_tools.update(s.name for _, s in servers[server])
        servers[SERVER] = [(s.name, s) for s in toolbox.specs()
                           if s.name not in REPLACED and s.name not in hub_tools]  # fmt: skip

        def handler_for(spec: ToolSpec) -> Any:
            async def handler(args: dict[str, Any]) -> dict[str, Any]:
                result = toolbox.call(spec.name, args)  # on this thread: the runner's DBs
                content: list[dict[str, Any]] = [{"type": "text", "text": result.content}]
                for image in result.images:
                    content.append({"type": "image", "data": image["data"],
                                    "mimeType": image["media_type"]})  # fmt: skip
                return {"content": content, "is_error": result.is_error}

            return handler

        def refusal(name: str, tool_input: Any) -> str | None:
            toolbox.ctx.heartbeat()
            why = policy.check(name, tool_input if isinstance(tool_input, dict) else {})
            if why is not None:
                logger.info("Claude Code's %s refused: %s", name, why[:200])
            return why

        async def pre_tool_use(data: Any, _tool_use_id: str | None, _ctx: Any) -> Any:
            why = refusal(str(data.get("tool_name", "")), data.get("tool_input"))
            if why is None:
                return {}
            return {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                    "permissionDecision": "deny", "permissionDecisionReason": why}}  # fmt: skip

        async def can_use_tool(name: str, tool_input: dict[str, Any], _ctx: Any) -> Any:
            why = refusal(name, tool_input)
            if why is None:
                return PermissionResultAllow()
            return PermissionResultDeny(message=why)

        sdk_servers: dict[str, Any] = {}
        for server, named in servers.items():
            tools = [SdkMcpTool(name=short, description=s.description,
                                input_schema=s.input_schema, handler=handler_for(s))
                     for short, s in named]  # fmt: skip
            sdk_servers[server] = create_sdk_mcp_server(name=server, version="1.0.0", tools=tools)
        allowed = [f"mcp__{server}__{short}" for server, named in servers.items()
                   for short, _ in named]  # fmt: skip
        return ClaudeAgentOptions(
            cwd=str(agent_dir), model=self.model, system_prompt=system, tools=policy.tools(),
            mcp_servers=sdk_servers, strict_mcp_config=True, allowed_tools=allowed,
            permission_mode="default", setting_sources=["project", "local"],
            can_use_tool=can_use_tool, settings=flag_settings(child_env),
            hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[pre_tool_use])]},
            resume=resume, env=child_env, cli_path=str(bundled_cli()),
            stderr=lambda line: logger.info("claude-code: %s", line[:500]),
        )  # fmt: skip

    def _env(self, agent_dir: Path) -> dict[str, str]:
        timeout_ms = str(int(self.config.timeout_s * 1000))
        out = {
            "CLAUDE_CONFIG_DIR": str(agent_dir / ".claude-sdk"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "API_TIMEOUT_MS": timeout_ms,
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(self.config.max_tokens),  # settings.max_tokens
        }
        bash = self.config.extra.get("bash_timeout_s")
        if isinstance(bash, int | float):
            out["BASH_DEFAULT_TIMEOUT_MS"] = str(int(bash * 1000))
        bash_max = self.config.extra.get("bash_max_timeout_s")
        if isinstance(bash_max, int | float):
            out["BASH_MAX_TIMEOUT_MS"] = str(int(bash_max * 1000))
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
            raise ProviderError("The claude provider needs the host's proxy, or "
                                "ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL")  # fmt: skip
        out["ANTHROPIC_API_KEY"] = key or PLACEHOLDER_KEY
        return out

    def _relay(self, sock_path: str) -> int:
        """A loopback port relayed to the proxy's unix socket (started once)."""
        if self._relay_port is not None:
            return self._relay_port
        self._relay_port = forward_loopback(sock_path, idle_s=600, name="claude-relay")
        return self._relay_port


def _final_text(tail: str, result: str) -> str:
    """The whole final reply: the pieces of a reply cut by max_tokens and continued (whose
    last piece is Claude Code's ``result``), else the result."""
    return tail if tail.endswith(result) and tail.strip() else result


def _streamed(event: dict[str, Any], current: str) -> str:
    """The streamed message's text after one raw API event (a new message starts empty)."""
    kind = event.get("type")
    if kind == "message_start":
        return ""
    delta = event.get("delta")
    if (
        kind == "content_block_delta"
        and isinstance(delta, dict)
        and delta.get("type") == "text_delta"
    ):
        return current + str(delta.get("text") or "")
    return current


async def _prompt_stream(
    prompt: str, images: list[Mapping[str, str]]
) -> AsyncIterator[dict[str, Any]]:
    """The turn's one user message: the prompt text, then the images as image blocks."""
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    for image in images:
        content.append({"type": "image", "source": {"type": "base64",
                        "media_type": image["media_type"], "data": image["data"]}})  # fmt: skip
    yield {"type": "user", "message": {"role": "user", "content": content}}
