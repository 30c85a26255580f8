"""A group's ``mcp_servers`` (NanoClaw's ``container.json`` ``mcpServers``), checked: a stdio
server ``{command, args, env}`` or a streamable-HTTP one ``{url, type?, headers}``, each with
optional ``instructions``. The runner's client is runner/mcp_client.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")


def safe_name(name: str) -> str:
    return _NAME_RE.sub("_", name)


@dataclass(frozen=True)
class ServerConfig:
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    instructions: str = ""  # the entry's ``instructions`` (NanoClaw passes them to the agent)

    @property
    def kind(self) -> str:
        return "http" if self.url else "stdio"


def parse_servers(raw: object) -> tuple[list[ServerConfig], list[str]]:
    """The servers of a ``mcpServers`` map, and a one-line problem for each entry skipped."""
    if not isinstance(raw, dict):
        return [], ([] if raw in (None, {}) else ["mcpServers is not an object"])
    out: list[ServerConfig] = []
    problems: list[str] = []
    for name, entry in raw.items():
        if not isinstance(name, str) or not name or not isinstance(entry, dict):
            problems.append(f"MCP server {name!r}: not an object")
            continue
        url, command = entry.get("url"), entry.get("command")
        args, env = entry.get("args") or [], entry.get("env") or {}
        headers = entry.get("headers") or {}
        if isinstance(url, str) and url:
            if not url.startswith(("http://", "https://")):
                problems.append(f"MCP server {name!r}: url must be http(s)")
                continue
            if entry.get("type") not in (None, "http", "streamable-http", "streamableHttp"):
                problems.append(f"MCP server {name!r}: transport {entry.get('type')!r} is not "
                                "supported (streamable HTTP or stdio only)")  # fmt: skip
                continue
            if not _str_map(headers):
                problems.append(f"MCP server {name!r}: headers must be an object of strings")
                continue
            out.append(ServerConfig(name, url=url, headers=dict(headers),
                                    instructions=_instructions(entry)))  # fmt: skip
        elif isinstance(command, str) and command:
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                problems.append(f"MCP server {name!r}: args must be a list of strings")
                continue
            if not _str_map(env):
                problems.append(f"MCP server {name!r}: env must be an object of strings")
                continue
            out.append(ServerConfig(name, command=command, args=tuple(args), env=dict(env),
                                    instructions=_instructions(entry)))  # fmt: skip
        else:
            problems.append(f"MCP server {name!r}: needs a command (stdio) or a url (HTTP)")
    return out, problems


def _instructions(entry: dict[str, Any]) -> str:
    value = entry.get("instructions")
    return value[:4000] if isinstance(value, str) else ""


def _str_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )
