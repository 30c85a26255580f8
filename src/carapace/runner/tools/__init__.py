"""The agent's tools: NanoClaw's fifteen messaging tools (spec §8), ``admin`` (its in-container
``ncl``, §12; left out when the group's ``cli_scope`` is ``disabled``) and the workspace tools.

``ToolBox(ctx, workspace)`` offers ``specs()`` to the provider and runs ``call(name, args)``:
arguments are checked against the schema, the heartbeat is touched before and after, the
tool in flight is recorded in ``container_state`` (``Bash`` with its declared timeout, as
the host's stuck rule expects), and every failure becomes an error result — a tool call
never raises, except ``TurnAbandoned`` on shutdown.
"""

from __future__ import annotations

from carapace.log import get_logger
from carapace.runner.providers.base import ToolResult, ToolSpec
from carapace.runner.tools import admin, interactive, messaging, scheduling, selfmod
from carapace.runner.tools.base import (
    Batch,
    Tool,
    ToolContext,
    ToolError,
    TurnAbandoned,
    validate_args,
)

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from carapace.runner.mcp_client import McpHub
    from carapace.runner.workspace import Workspace

logger = get_logger(__name__)

MESSAGING_TOOLS: tuple[Tool, ...] = (
    *messaging.TOOLS,
    *scheduling.TOOLS,
    *interactive.TOOLS,
    *selfmod.TOOLS,
    *admin.TOOLS,
)
TOOL_NAMES = tuple(t.spec.name for t in MESSAGING_TOOLS)

__all__ = [
    "MESSAGING_TOOLS",
    "TOOL_NAMES",
    "Batch",
    "Tool",
    "ToolBox",
    "ToolContext",
    "ToolError",
    "TurnAbandoned",
]


class ToolBox:
    def __init__(
        self, ctx: ToolContext, workspace: Workspace | None = None, mcp: McpHub | None = None
    ) -> None:
        self.ctx = ctx
        self.workspace = workspace
        self.mcp = mcp
        self._tools = {t.spec.name: t for t in MESSAGING_TOOLS if t.enabled(ctx.config)}

    def specs(self) -> list[ToolSpec]:
        specs = [t.spec for t in self._tools.values()]
        if self.workspace is not None:
            specs += [s for s in self.workspace.tools() if s.name not in self._tools]
        if self.mcp is not None:
            specs += self.mcp.specs()
        return specs

    def call(self, name: str, args: object) -> ToolResult:
        self.ctx.heartbeat()
        timeout_ms: int | None = None
        if name == "bash" and isinstance(args, dict):
            t = args.get("timeout_s")
            timeout_ms = int(float(t) * 1000) if isinstance(t, int | float) else 120_000
        try:
            self.ctx.outbound.set_tool("Bash" if name == "bash" else name, timeout_ms)
        except Exception:
            logger.exception("could not record the tool in flight")
        try:
            return self._call(name, args)
        finally:
            try:
                self.ctx.outbound.set_tool(None)
            except Exception:
                logger.exception("could not clear the tool in flight")
            self.ctx.heartbeat()

    def _call(self, name: str, args: object) -> ToolResult:
        tool = self._tools.get(name)
        if tool is None and self.mcp is not None and self.mcp.knows(name):
            if not isinstance(args, dict):
                return ToolResult(
                    f"Error: invalid arguments for {name}: not an object", is_error=True
                )
            result = self.mcp.call(name, args)
            logger.info("tool %s: %s", name, result.content[:200])
            return result
        if tool is None:
            if self.workspace is not None and self.workspace.knows(name):
                return self.workspace.call(name, args)  # a disabled tool explains itself
            return ToolResult(f"Unknown tool: {name}", is_error=True)
        checked = validate_args(tool.spec, args)
        if isinstance(checked, str):
            return ToolResult(f"Error: invalid arguments for {name}: {checked}", is_error=True)
        try:
            text = tool.handler(self.ctx, checked)
        except ToolError as exc:
            logger.info("tool %s refused: %s", name, exc)
            return ToolResult(f"Error: {exc}", is_error=True)
        except TurnAbandoned:
            raise
        except Exception as exc:  # the tool boundary: one bad call must not kill the runner
            logger.exception("tool %s failed", name)
            return ToolResult(f"Error: {name} failed: {exc}", is_error=True)
        logger.info("tool %s: %s", name, text[:200])
        return ToolResult(text)
