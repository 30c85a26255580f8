"""Claude Code's own tools under carapace's workspace policy (the ``claude`` provider).

Claude Code's built-in ``Bash``, ``Read``, ``Write``, ``Edit``, ``Glob`` and ``Grep`` stand in
for carapace's ``bash``, ``read_file``, ``write_file``, ``edit_file``, ``list_files`` and
``grep``: each is offered exactly when the group's settings enable its carapace counterpart
(``settings.tools``, ``bash`` and the runner's sandbox, as ``Workspace.enabled`` decides),
and every call is checked first by ``ClaudeToolPolicy.check`` with the workspace's own
rules — a path must resolve (links followed) into the group folder, the session folder, the
runner's temp folder or a read-only root, writes only into the writable ones and never into
the runner's session files or Claude Code's project settings (``.claude/``); ``Bash`` only
when carapace's ``bash`` would run, never in the background, and never while Claude Code
holds a real API key in its environment (a command could read it). The check runs as a
``PreToolUse`` hook (a hook's deny wins over any permission rule) and as the
``can_use_tool`` callback.

``WebFetch`` is not enabled: Claude Code fetches from its own process, which in the sandbox
has no network and outside it would go around the host's egress rules; carapace's
``web_fetch`` (``mcp__carapace__web_fetch``), fetched by the host under the group's ``web``
settings, does that job. The check happens before Claude Code opens the path, so a link
swapped in between is not seen here; in the bwrap sandbox only the bound folders exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from carapace.runner.workspace_specs import PathRefused

if TYPE_CHECKING:
    from carapace.runner.workspace import Workspace

# Claude Code's tool -> the carapace workspace tool whose settings and policy it follows
CLAUDE_TOOLS: Mapping[str, str] = {
    "Bash": "bash",
    "Read": "read_file",
    "Write": "write_file",
    "Edit": "edit_file",
    "Glob": "list_files",
    "Grep": "grep",
}
REPLACED = frozenset(CLAUDE_TOOLS.values())  # not offered again as mcp__carapace__<tool>
# how the system prompt names each workspace tool for this provider
PROMPT_NAMES: Mapping[str, str] = {
    **{v: k for k, v in CLAUDE_TOOLS.items()},
    "web_fetch": "mcp__carapace__web_fetch",
}
KEY_IN_ENV = (
    "Bash is refused: this runner has no host proxy, so Claude Code holds a real API key in "
    "its environment, which a command could read. Run the group in the bwrap sandbox."
)
# the workspace reads ~ as the group folder, Claude Code as its $HOME: never let them differ
NO_TILDE = (
    "Paths starting with ~ are refused: give a relative path (it starts in the group folder)."
)
NO_BACKGROUND = "Bash in the background is refused: a command must finish within its timeout."


class ClaudeToolPolicy:
    """Which of Claude Code's tools a group gets, and the check of each call."""

    def __init__(self, workspace: Workspace | None, *, key_in_env: bool = False) -> None:
        self.workspace = workspace
        self.key_in_env = key_in_env

    def tools(self) -> list[str]:
        """Claude Code's tools to enable (``ClaudeAgentOptions.tools``)."""
        ws = self.workspace
        if ws is None:
            return []
        return [name for name, ours in CLAUDE_TOOLS.items() if ws.enabled(ours)]

    def check(self, name: str, tool_input: Mapping[str, Any]) -> str | None:
        """Why the call must not run, or None when the workspace policy allows it.

        Tools outside ``CLAUDE_TOOLS`` are carapace's own (``mcp__carapace__*``, checked
        where they run) and pass; any other built-in is refused."""
        if name.startswith("mcp__"):
            return None
        ours = CLAUDE_TOOLS.get(name)
        ws = self.workspace
        if ours is None or ws is None:
            return f"{name} is not available to this agent group."
        if not ws.enabled(ours):
            return ws.call(ours, {}).content  # the workspace's own explanation
        try:
            if name == "Bash":
                return self._bash(tool_input)
            if name in ("Read", "Write", "Edit"):
                path = _text(tool_input, "file_path")
                if path.startswith("~"):
                    return NO_TILDE
                ws.resolve(path, write=name != "Read")  # writes: never into .claude/
                return None
            # Glob, Grep: the folder searched (default: the working folder)
            folder = _text(tool_input, "path") or "."
            if folder.startswith("~"):
                return NO_TILDE
            ws.resolve(folder)
            if name == "Glob":
                return _glob_pattern(_text(tool_input, "pattern"))
            return None
        except PathRefused as exc:
            return str(exc)

    def _bash(self, tool_input: Mapping[str, Any]) -> str | None:
        if self.key_in_env:
            return KEY_IN_ENV
        if tool_input.get("run_in_background"):
            return NO_BACKGROUND
        if not _text(tool_input, "command"):
            return "Bash needs a command."
        return None


def _text(tool_input: Mapping[str, Any], key: str) -> str:
    value = tool_input.get(key)
    return value if isinstance(value, str) else ""


def _glob_pattern(pattern: str) -> str | None:
    """A pattern stays beneath the folder searched: not absolute, no ``~``, no ``..``."""
    if not pattern:
        return "Glob needs a pattern."
    if pattern.startswith(("/", "~")) or ".." in pattern.replace("\\", "/").split("/"):
        return (f"The pattern {pattern!r} reaches outside the folder searched; give a "
                "relative pattern and the folder as path.")  # fmt: skip
    return None
