"""``create_agent``, ``install_packages``, ``add_mcp_server`` (spec §8.10-8.11).

Fire-and-forget ``kind='system'`` requests; the host checks permissions and asks an admin.
"""

from __future__ import annotations

from carapace.runner.tools.base import Tool, ToolContext, ToolError, tool
from carapace.timefmt import new_id

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


MAX_PACKAGES = 20


def _create_agent(ctx: ToolContext, args: dict[str, Any]) -> str:
    name = args.get("name")
    if not name:
        raise ToolError("name is required")
    request_id = new_id("msg")
    ctx.outbound.write(
        id=request_id,
        kind="system",
        content={
            "action": "create_agent",
            "requestId": request_id,
            "name": name,
            "instructions": args.get("instructions") or None,
        },
        now=ctx.now(),
    )
    return f'Creating agent "{name}". You will be notified when it is ready.'


def _install_packages(ctx: ToolContext, args: dict[str, Any]) -> str:
    apt: list[str] = list(args.get("apt") or [])
    npm: list[str] = list(args.get("npm") or [])
    pip: list[str] = list(args.get("pip") or [])
    if not apt and not npm and not pip:
        raise ToolError("At least one apt, npm or pip package is required")
    if len(apt) + len(npm) + len(pip) > MAX_PACKAGES:
        raise ToolError(f"Maximum {MAX_PACKAGES} packages per request")
    from carapace.packagenames import valid_package  # its patterns: not at the runner's start

    for p in apt:
        if not valid_package("apt", p):
            raise ToolError(
                f'Invalid apt package name: "{p}". Only lowercase letters, digits, and ._+- allowed.'
            )
    for p in npm:
        if not valid_package("npm", p):
            raise ToolError(
                f'Invalid npm package name: "{p}". No version specs or shell characters.'
            )
    for p in pip:
        if not valid_package("pip", p):
            raise ToolError(f'Invalid pip package name: "{p}". A bare name: no version specs.')
    content: dict[str, Any] = {"action": "install_packages", "apt": apt, "npm": npm,
                               "reason": args.get("reason") or ""}  # fmt: skip
    if pip:
        content["pip"] = pip
    ctx.outbound.write(id=new_id("msg"), kind="system", content=content, now=ctx.now())
    return "Package install request submitted. You will be notified when admin approves or rejects."


def _add_mcp_server(ctx: ToolContext, args: dict[str, Any]) -> str:
    name, command, url = args.get("name"), args.get("command"), args.get("url")
    if not name or not (command or url):
        raise ToolError("name and a command or url are required")
    content: dict[str, Any] = {"action": "add_mcp_server", "name": name}
    if url and not command:
        content["url"] = url
    else:
        content.update(command=command, args=args.get("args") or [], env=args.get("env") or {})
    ctx.outbound.write(id=new_id("msg"), kind="system", content=content, now=ctx.now())
    return "MCP server request submitted. You will be notified when admin approves or rejects."


TOOLS = [
    Tool(
        tool(
            "create_agent",
            "Ask the host to create a new agent you can then message by name (admins only).",
            {
                "name": {"type": "string"},
                "instructions": {"type": "string", "description": "Its initial memory."},
            },
            ["name"],
        ),
        _create_agent,
    ),
    Tool(
        tool(
            "install_packages",
            "Request packages for your sandbox (an admin must approve): pip (PyPI) into your "
            "own virtualenv, npm into your own prefix, both on your PATH from the turn after "
            "they install. apt packages are not installed per group (the request says so).",
            {
                "pip": {"type": "array", "items": {"type": "string"}},
                "apt": {"type": "array", "items": {"type": "string"}},
                "npm": {"type": "array", "items": {"type": "string"}},
                "reason": {"type": "string"},
            },
            [],
        ),
        _install_packages,
    ),
    Tool(
        tool(
            "add_mcp_server",
            "Request an extra MCP server (an admin must approve): a stdio command (run inside "
            "your sandbox) or a streamable-HTTP url. Its tools appear as "
            "mcp__<name>__<tool> from the turn after approval.",
            {
                "name": {"type": "string"},
                "command": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}},
                "env": {"type": "object"},
                "url": {"type": "string", "description": "Instead of command: an http(s) URL."},
            },
            ["name"],
        ),
        _add_mcp_server,
    ),
]
