"""The agent's workspace tools: shell, files, search and web, confined to the agent's roots.

The agent is untrusted (DESIGN §5), so every path a tool receives is resolved relative to
the group folder, ``realpath``-ed (symlinks followed) and checked against the realpaths of
the roots: the group folder, the session folder and the runner's temp folder (read-write)
plus any extra read-only roots (e.g. ``groups/global``). Anything that escapes — ``..``,
an absolute path elsewhere, a symlink to ``/etc`` or to the central DB — is refused with a
tool error. Directory walks never follow symlinks. Files are then opened beneath their
root with ``safefs.open_beneath`` (no link followed, ``fstat`` on the descriptor), so a
link swapped in between the check and the open is refused, not followed.

``bash`` is the exception: a shell is only as confined as the process running it, so it
is offered only when the runner itself is sandboxed (``bash: "sandboxed"``) or the
operator explicitly allowed it (``bash: "allowed"``). Its environment carries no
credentials, and its whole process group is killed when the command returns or times out.

Every tool is a ``ToolSpec`` plus a handler; ``Workspace.call`` validates arguments against
the spec and turns every failure into an error ``ToolResult`` — it never raises.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from carapace import safefs
from carapace.errors import ConfigError
from carapace.limits import Limits, rlimit_preexec
from carapace.log import get_logger
from carapace.record import field, record
from carapace.runner import workspace_files as files
from carapace.runner.providers.base import ToolResult, ToolSpec
from carapace.runner.workspace_shell import run_shell
from carapace.runner.workspace_specs import (
    BASH_DISABLED,
    TOOL_DISABLED,
    TOOL_SPECS,
    WEB_DISABLED,
    PathRefused,
    WorkspaceError,
    validate_args,
)

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any, Literal

    BashMode = Literal["off", "sandboxed", "allowed"]


logger = get_logger(__name__)

BASH_MODES: tuple[BashMode, ...] = ("off", "sandboxed", "allowed")
# Runner-owned files at the top of the session folder; the file tools never write them.
SESSION_PROTECTED = ("inbound.db", "outbound.db", ".heartbeat")
# Claude Code's project settings in the group folder (hooks, permissions, env): never written
# by tools, and an empty read-only folder in the bwrap sandbox (docs/sandbox.md)
PROJECT_SETTINGS = ".claude"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@record(frozen=True)
class WorkspaceLimits:
    bash_timeout_s: float = 120.0
    bash_max_timeout_s: float = 600.0
    output_chars: int = 30_000  # bash, grep and list_files output
    read_bytes: int = 256 * 1024  # read_file output
    read_lines: int = 2000
    line_chars: int = 2000  # longer lines are cut in read_file and grep
    write_bytes: int = 1024 * 1024  # write_file content, edit_file file size
    list_entries: int = 500
    grep_matches: int = 500
    process: Limits = field(default_factory=Limits)  # rlimits for every command (limits.py)
    grep_file_bytes: int = 2 * 1024 * 1024
    walk_entries: int = 100_000  # directory entries visited by one list_files/grep
    web_bytes: int = 2 * 1024 * 1024
    web_timeout_s: float = 20.0
    web_chars: int = 30_000  # default max_chars for web_fetch
    web_max_chars: int = 100_000


@record(frozen=True)
class WorkspacePolicy:
    """What one agent group's runner may touch; built by the runner from the group config."""

    group_dir: Path  # the agent group's folder: cwd, HOME, base of relative paths
    session_dir: Path
    tmp_dir: Path  # the runner's own temp folder (TMPDIR for bash)
    bash: BashMode = "off"
    web: bool = True
    web_private: bool = False  # may web_fetch reach loopback / private-network addresses?
    read_only_roots: tuple[Path, ...] = ()  # folders or single files: readable, never written
    env: Mapping[str, str] = field(default_factory=dict)  # extra bash env the operator set
    limits: WorkspaceLimits = field(default_factory=WorkspaceLimits)
    tools: frozenset[str] | None = None  # the tools the group's settings enable (None: all)
    bash_refusal: str = BASH_DISABLED  # what a bash call gets while bash is off


@record(frozen=True)
class Root:
    path: str  # a realpath
    writable: bool
    label: str

    def contains(self, real: str) -> bool:
        return real == self.path or real.startswith(self.path.rstrip("/") + "/")


Handler = Callable[[dict[str, "Any"]], ToolResult]


class Workspace:
    """The workspace tools of one agent group, confined to the policy's roots."""

    def __init__(self, policy: WorkspacePolicy) -> None:
        if policy.bash not in BASH_MODES:
            raise ConfigError(f"bash must be one of {', '.join(BASH_MODES)}, not {policy.bash!r}")
        self.policy = policy
        self.limits = policy.limits
        self.group = os.path.realpath(policy.group_dir)
        self.session = os.path.realpath(policy.session_dir)
        self.roots: tuple[Root, ...] = (
            Root(self.group, True, "group folder"),
            Root(self.session, True, "session folder"),
            Root(os.path.realpath(policy.tmp_dir), True, "temp folder"),
            *(Root(os.path.realpath(p), False, "extra root") for p in policy.read_only_roots),
        )
        handlers: dict[str, Handler] = {
            "bash": self._bash,
            "read_file": partial(files.read_file, self),
            "write_file": partial(files.write_file, self),
            "edit_file": partial(files.edit_file, self),
            "list_files": partial(files.list_files, self),
            "grep": partial(files.grep, self),
            "web_fetch": self._web_fetch,
        }
        self._tools = {spec.name: (spec, handlers[spec.name]) for spec in TOOL_SPECS}

    # --- the tool surface ------------------------------------------------------------------

    def knows(self, name: str) -> bool:
        """A workspace tool, offered or not (a call to a disabled one gets an explanation)."""
        return name in self._tools

    def enabled(self, name: str) -> bool:
        if self.policy.tools is not None and name not in self.policy.tools:
            return False
        if name == "bash":
            return self.policy.bash != "off"
        if name == "web_fetch":
            return self.policy.web
        return name in self._tools

    def tools(self) -> list[ToolSpec]:
        """The specs to offer the model: disabled tools (bash off, web off) are left out."""
        return [spec for name, (spec, _) in self._tools.items() if self.enabled(name)]

    def call(self, name: str, args: object) -> ToolResult:
        """Run one tool call. Never raises: every failure is an error result."""
        entry = self._tools.get(name)
        if entry is None:
            known = ", ".join(s.name for s in self.tools())
            return ToolResult(f"Unknown tool {name!r}. Available tools: {known}.", True)
        if not self.enabled(name):
            return ToolResult(self._refusal(name), True)
        spec, handler = entry
        checked = validate_args(spec.input_schema, args)
        if isinstance(checked, str):
            return ToolResult(f"Invalid arguments for {name}: {checked}", True)
        try:
            return handler(checked)
        except WorkspaceError as exc:
            return ToolResult(str(exc), True)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            return ToolResult(f"{name} failed: {exc.strerror or exc}{where}", True)
        except Exception:  # the tool boundary: one bad call must not kill the runner
            logger.exception("workspace tool %s failed", name)
            return ToolResult(f"{name} failed with an internal error (see the runner log).", True)

    def _refusal(self, name: str) -> str:
        if name == "bash":
            return self.policy.bash_refusal
        if self.policy.tools is not None and name not in self.policy.tools:
            return TOOL_DISABLED.format(name=name)
        return WEB_DISABLED

    # --- confinement -------------------------------------------------------------------------

    def resolve(self, path: str, *, write: bool = False) -> str:
        """Return the realpath of ``path`` if it stays inside the roots, else raise PathRefused.

        Relative paths (and ``~``) start at the group folder; absolute paths must land in a
        root. With ``write``, the root must be writable and the file not runner-owned.
        """
        if not path:
            raise PathRefused("The path is empty.")
        if "\x00" in path:
            raise PathRefused(f"The path {path!r} contains a NUL byte and is refused.")
        expanded = self.group + path[1:] if path == "~" or path.startswith("~/") else path
        real = os.path.realpath(os.path.join(self.group, expanded))
        root = self._root_of(real)
        if root is None:
            raise PathRefused(
                f"The path {path!r} resolves to {real}, which is outside the workspace. "
                f"{self.roots_text()}"
            )
        if write and not root.writable:
            raise PathRefused(
                f"The path {path!r} is in a read-only root ({root.path}); writing there is "
                f"refused. {self.roots_text()}"
            )
        if write and self._protected(real):
            raise PathRefused(f"{real} belongs to the runner and cannot be written by tools.")
        settings = os.path.join(self.group, PROJECT_SETTINGS)
        if write and (real == settings or real.startswith(settings + os.sep)):
            raise PathRefused(
                f"{real} is in Claude Code's project settings folder ({PROJECT_SETTINGS}/), "
                "which tools never write (its hooks and permissions would bypass this policy)."
            )
        return real

    def roots_text(self) -> str:
        listed = "; ".join(
            f"{r.path} ({r.label}, {'read-write' if r.writable else 'read-only'})"
            for r in self.roots
        )
        return f"Allowed roots: {listed}."

    def display(self, real: str) -> str:
        """How a path is shown to the agent: relative to the group folder when inside it."""
        if real == self.group:
            return "."
        if real.startswith(self.group.rstrip("/") + "/"):
            return real[len(self.group.rstrip("/")) + 1 :]
        return real

    def _root_of(self, real: str) -> Root | None:
        # The deepest root wins, so a read-only root nested in a writable one is honoured.
        matches = [r for r in self.roots if r.contains(real)]
        return max(matches, key=lambda r: len(r.path)) if matches else None

    def open_confined(self, real: str, shown: str) -> int:
        """A descriptor on the regular file ``real`` (a checked realpath), opened beneath its
        root without following any link, then checked with ``fstat``: a link swapped in after
        ``resolve`` is refused instead of followed (no check-then-use)."""
        root = self._root_of(real)
        if root is None or real == root.path:
            raise WorkspaceError(f"{shown} is a directory; use list_files to see its entries.")
        rel = real[len(root.path.rstrip("/")) + 1 :]
        try:
            fd = safefs.open_beneath(root.path, rel, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise WorkspaceError(f"File not found: {shown}") from None
        except safefs.UnsafePathError:
            raise PathRefused(f"{shown} changed into a link while being opened; refused.") from None
        except OSError as exc:
            raise WorkspaceError(f"Cannot open {shown}: {exc.strerror or exc}.") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise WorkspaceError(f"{shown} is a directory; use list_files to see its entries.")
            raise WorkspaceError(f"{shown} is not a regular file.")
        os.set_blocking(fd, True)
        return fd

    def _protected(self, real: str) -> bool:
        if os.path.dirname(real) != self.session:
            return False
        name = os.path.basename(real)
        return any(name == p or name.startswith(p + "-") for p in SESSION_PROTECTED)

    # --- bash -------------------------------------------------------------------------------

    def bash_env(self) -> dict[str, str]:
        """The whole environment of a bash command: nothing inherited but PATH."""
        env = {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,
            "HOME": self.group,
            "LANG": "C.UTF-8",
            "TMPDIR": self.roots[2].path,
            "TERM": "dumb",
        }
        if os.environ.get("NODE_PATH"):  # the group's npm packages (carapace.packages)
            env["NODE_PATH"] = os.environ["NODE_PATH"]
        env.update(self.policy.env)
        return env

    def _bash(self, args: dict[str, Any]) -> ToolResult:
        limits = self.limits
        timeout = float(args.get("timeout_s", limits.bash_timeout_s))
        if timeout <= 0:
            raise WorkspaceError("timeout_s must be a positive number of seconds.")
        if not os.path.isdir(self.group):
            raise WorkspaceError(f"The group folder {self.group} does not exist.")
        return run_shell(
            args["command"],
            cwd=self.group,
            env=self.bash_env(),
            timeout=min(timeout, limits.bash_max_timeout_s),
            max_chars=limits.output_chars,
            preexec=self.command_preexec(),
        )

    def command_preexec(self) -> Callable[[], None]:
        """The per-command limits (memory, processes, file size, CPU time) for a child."""
        return rlimit_preexec(self.limits.process, cpu=True)

    # --- files --------------------------------------------------------------------------------

    def _web_fetch(self, args: dict[str, Any]) -> ToolResult:
        limits = self.limits
        max_chars = min(int(args.get("max_chars", limits.web_chars)), limits.web_max_chars)
        from carapace.runner import webfetch  # lazy: http.client & co. cost runner start time

        proxy = os.environ.get("CARAPACE_PROXY_SOCKET")
        if proxy:  # no network here: the host fetches, with its own policy
            return webfetch.fetch_via_host(
                proxy, args["url"], max_chars=max_chars, max_bytes=limits.web_bytes,
                timeout_s=limits.web_timeout_s,
            )  # fmt: skip
        return webfetch.fetch(
            args["url"],
            max_chars=max_chars,
            max_bytes=limits.web_bytes,
            timeout_s=limits.web_timeout_s,
            allow_private=self.policy.web_private,
        )
