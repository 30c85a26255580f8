"""The workspace tools' JSON schemas, their argument check and the "disabled" messages.

The specs are what the model sees: descriptions state the limits the tools enforce (see
``WorkspaceLimits`` in ``workspace.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from carapace.errors import ValidationError
from carapace.runner.providers.base import ToolSpec

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


BASH_DISABLED = (
    "Shell access is disabled for this agent group, so the bash tool cannot run. An "
    "operator can enable it in the group's settings (carapace admin groups config update "
    '--settings): `bash: "sandboxed"` runs commands only when the runner is in the bwrap '
    'sandbox; `bash: "allowed"` runs them even without a sandbox (unsafe). The file tools '
    "(read_file, write_file, edit_file, list_files, grep) still work."
)
BASH_NOT_SANDBOXED = (
    'Shell access for this agent group is set to `bash: "sandboxed"`, but this runner is not '
    "running in a sandbox (the host's runner backend is not bwrap), so the bash tool cannot "
    "run. An operator can run the group with the bwrap backend, or set "
    '`bash: "allowed"` to run commands without a sandbox (unsafe). The file tools '
    "(read_file, write_file, edit_file, list_files, grep) still work."
)
WEB_DISABLED = (
    "Web access is disabled for this agent group, so web_fetch cannot run. An operator can "
    "enable it by setting `web: true` in the group's container config (container.json)."
)
TOOL_DISABLED = (
    "The {name} tool is turned off for this agent group (the `tools` list in the group's "
    "settings); an operator can enable it with `carapace admin groups config update`."
)


class WorkspaceError(ValidationError):
    """A tool call the workspace refuses; its message is shown to the agent."""


class PathRefused(WorkspaceError):
    """A path outside the roots, in a read-only root, protected, or malformed."""


def bash_refusal(why_off: str, setting: str) -> str:
    """The text a bash call gets when bash is off; ``why_off`` from ``AgentSettings.bash_mode``."""
    if why_off == "tools":
        return TOOL_DISABLED.format(name="bash")
    if why_off == "not-sandboxed":
        return BASH_NOT_SANDBOXED
    return BASH_DISABLED


_JSON_TYPES: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def validate_args(schema: Mapping[str, Any], args: object) -> dict[str, Any] | str:
    """Check ``args`` against a flat object schema; return the args or what is wrong."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f"expected a JSON object, got {type(args).__name__}."
    props: dict[str, Any] = schema.get("properties", {})
    unknown = sorted(set(args) - set(props))
    if unknown and schema.get("additionalProperties") is False:
        return f"unknown argument(s) {', '.join(unknown)}; expected {', '.join(props)}."
    missing = [k for k in schema.get("required", []) if k not in args]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}."
    out: dict[str, Any] = {}
    for key, value in args.items():
        prop = props.get(key, {})
        kind = prop.get("type")
        if value is None and key not in schema.get("required", []):
            continue  # an explicit null means "not given"
        if kind == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is not None and not _JSON_TYPES[kind](value):
            return f"{key} must be a JSON {kind}, got {type(value).__name__}."
        minimum = prop.get("minimum")
        if minimum is not None and value < minimum:
            return f"{key} must be at least {minimum}, got {value}."
        out[key] = value
    return out


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_PATH_HELP = "Relative to the group folder (your working directory), or absolute inside a root."

BASH_SPEC = ToolSpec(
    name="bash",
    description=(
        "Run a shell command with bash -c in the agent group's folder (the working directory; "
        "HOME is the same folder). stdin is empty; stdout and stderr are combined; output "
        "longer than 30000 characters keeps its head and tail. The environment is minimal and "
        "holds no credentials. The exit code is reported. On timeout the command and all its "
        "children are killed, and background jobs do not outlive the command."
    ),
    input_schema=_schema(
        {
            "command": {"type": "string", "description": "The command line to run."},
            "timeout_s": {
                "type": "number",
                "description": "Seconds before the command is killed (default 120, max 600).",
            },
        },
        ["command"],
    ),
)
READ_SPEC = ToolSpec(
    name="read_file",
    description=(
        "Read a text file, numbered like `cat -n`. Returns up to 2000 lines (about 256 KiB) "
        "from `offset`; long lines are cut at 2000 characters. Binary files are refused."
    ),
    input_schema=_schema(
        {
            "path": {"type": "string", "description": f"The file. {_PATH_HELP}"},
            "offset": {
                "type": "integer",
                "minimum": 1,
                "description": "First line to return, counting from 1 (default 1).",
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "description": "How many lines to return (default and max 2000).",
            },
        },
        ["path"],
    ),
)
WRITE_SPEC = ToolSpec(
    name="write_file",
    description=(
        "Create or overwrite a text file with `content` (at most 1 MiB), creating missing "
        "parent folders. The write is atomic. Read-only roots cannot be written."
    ),
    input_schema=_schema(
        {
            "path": {"type": "string", "description": f"The file. {_PATH_HELP}"},
            "content": {"type": "string", "description": "The whole new content of the file."},
        },
        ["path", "content"],
    ),
)
EDIT_SPEC = ToolSpec(
    name="edit_file",
    description=(
        "Replace an exact string in a text file. `old_string` must match exactly (whitespace "
        "included) and be unique in the file, unless `replace_all` is true. Reports how many "
        "occurrences were replaced."
    ),
    input_schema=_schema(
        {
            "path": {"type": "string", "description": f"The file. {_PATH_HELP}"},
            "old_string": {"type": "string", "description": "The exact text to replace."},
            "new_string": {"type": "string", "description": "The replacement text."},
            "replace_all": {
                "type": "boolean",
                "description": "Replace every occurrence (default false).",
            },
        },
        ["path", "old_string", "new_string"],
    ),
)
LIST_SPEC = ToolSpec(
    name="list_files",
    description=(
        "List a folder, sorted, at most 500 entries. Without `pattern`, lists the folder's own "
        "entries; with a glob `pattern` (e.g. `*.md`, `**/*.py`, `notes/**`) matched against "
        "paths relative to the folder, searches below it. Folders end in `/`, symlinks in `@` "
        "(symlinks are never followed)."
    ),
    input_schema=_schema(
        {
            "path": {"type": "string", "description": f"The folder (default `.`). {_PATH_HELP}"},
            "pattern": {"type": "string", "description": "A glob; `**` spans folders."},
        },
        [],
    ),
)
GREP_SPEC = ToolSpec(
    name="grep",
    description=(
        "Search file contents with a Python regular expression. Prints `file:line:text` for "
        "each matching line (at most 500). Searches a file, or every file below a folder "
        "(symlinks not followed); binary files and files over 2 MiB are skipped."
    ),
    input_schema=_schema(
        {
            "pattern": {"type": "string", "description": "A Python `re` regular expression."},
            "path": {
                "type": "string",
                "description": f"File or folder to search (default `.`). {_PATH_HELP}",
            },
            "glob": {
                "type": "string",
                "description": (
                    "Only search files matching this glob: without `/` it matches the file "
                    "name (`*.py`), with `/` the path relative to `path` (`src/**/*.py`)."
                ),
            },
            "ignore_case": {"type": "boolean", "description": "Case-insensitive (default false)."},
        },
        ["pattern"],
    ),
)
WEB_SPEC = ToolSpec(
    name="web_fetch",
    description=(
        "Fetch an http(s) URL (redirects followed, 20 s timeout, 2 MiB cap) and return its "
        "status, final URL and text: HTML is converted to readable text with links as "
        "[text](url); other text types are returned as they are; binary content is refused."
    ),
    input_schema=_schema(
        {
            "url": {"type": "string", "description": "An http:// or https:// URL."},
            "max_chars": {
                "type": "integer",
                "minimum": 1,
                "description": "Characters of text to return (default 30000, max 100000).",
            },
        },
        ["url"],
    ),
)

TOOL_SPECS: tuple[ToolSpec, ...] = (
    BASH_SPEC,
    READ_SPEC,
    WRITE_SPEC,
    EDIT_SPEC,
    LIST_SPEC,
    GREP_SPEC,
    WEB_SPEC,
)
