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

import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from carapace import safefs
from carapace.errors import ConfigError, ValidationError
from carapace.limits import Limits, rlimit_preexec
from carapace.runner import webfetch
from carapace.runner.providers.base import ToolResult, ToolSpec
from carapace.runner.workspace_shell import run_shell
from carapace.runner.workspace_specs import (
    BASH_DISABLED,
    TOOL_DISABLED,
    TOOL_SPECS,
    WEB_DISABLED,
    validate_args,
)

logger = logging.getLogger(__name__)

BashMode = Literal["off", "sandboxed", "allowed"]
BASH_MODES: tuple[BashMode, ...] = ("off", "sandboxed", "allowed")
# Runner-owned files at the top of the session folder; the file tools never write them.
SESSION_PROTECTED = ("inbound.db", "outbound.db", ".heartbeat")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class WorkspaceError(ValidationError):
    """A tool call the workspace refuses; its message is shown to the agent."""


class PathRefused(WorkspaceError):
    """A path outside the roots, in a read-only root, protected, or malformed."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Root:
    path: str  # a realpath
    writable: bool
    label: str

    def contains(self, real: str) -> bool:
        return real == self.path or real.startswith(self.path.rstrip("/") + "/")


Handler = Callable[[dict[str, Any]], ToolResult]


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
            "read_file": self._read_file,
            "write_file": self._write_file,
            "edit_file": self._edit_file,
            "list_files": self._list_files,
            "grep": self._grep,
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

    def _read_file(self, args: dict[str, Any]) -> ToolResult:
        limits = self.limits
        real = self.resolve(args["path"])
        shown = self.display(real)
        offset = int(args.get("offset", 1))
        limit = min(int(args.get("limit", limits.read_lines)), limits.read_lines)
        out: list[str] = []
        used = 0
        last = offset - 1
        more = False
        with os.fdopen(self.open_confined(real, shown), "rb") as f:
            if b"\x00" in f.read(8192):
                size = os.fstat(f.fileno()).st_size
                raise WorkspaceError(f"{shown} is a binary file ({size} bytes); not shown.")
            f.seek(0)
            number = 0
            for number, raw in enumerate(_lines(f, limits.line_chars * 4), 1):
                if number < offset:
                    continue
                if len(out) >= limit:
                    more = True
                    break
                line = raw.decode("utf-8", "replace")
                if len(line) > limits.line_chars:
                    line = line[: limits.line_chars] + " [line truncated]"
                entry = f"{number:>6}\t{line}"
                if used + len(entry) + 1 > limits.read_bytes and out:
                    more = True
                    break
                out.append(entry)
                used += len(entry) + 1
                last = number
        if number == 0:
            return ToolResult(f"{shown} is empty.")
        if not out:
            return ToolResult(
                f"{shown} has {number} lines; offset {offset} is past the end.", is_error=True
            )
        if more:
            out.append(
                f"[Showing lines {offset}-{last}; the file continues. "
                f"Call read_file with offset={last + 1} to read on.]"
            )
        return ToolResult("\n".join(out))

    def _write_file(self, args: dict[str, Any]) -> ToolResult:
        data = args["content"].encode("utf-8")
        if len(data) > self.limits.write_bytes:
            raise WorkspaceError(
                f"The content is {len(data)} bytes; write_file accepts at most "
                f"{self.limits.write_bytes}."
            )
        if args["path"].endswith("/"):
            raise WorkspaceError(f"The path {args['path']!r} names a folder, not a file.")
        real = self.resolve(args["path"], write=True)
        existed = os.path.lexists(real)
        self._atomic_write(real, data)
        verb = "Overwrote" if existed else "Created"
        return ToolResult(f"{verb} {self.display(real)} ({len(data)} bytes).")

    def _edit_file(self, args: dict[str, Any]) -> ToolResult:
        old, new = args["old_string"], args["new_string"]
        if not old:
            raise WorkspaceError("old_string is empty; use write_file to create a file.")
        if old == new:
            raise WorkspaceError("old_string and new_string are the same; nothing to change.")
        real = self.resolve(args["path"], write=True)
        shown = self.display(real)
        with os.fdopen(self.open_confined(real, shown), "rb") as f:
            if os.fstat(f.fileno()).st_size > self.limits.write_bytes:
                raise WorkspaceError(f"{shown} is larger than {self.limits.write_bytes} bytes.")
            raw = f.read(self.limits.write_bytes + 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WorkspaceError(f"{shown} is not UTF-8 text; edit_file cannot change it.")
        count = text.count(old)
        if count == 0:
            raise WorkspaceError(
                f"old_string was not found in {shown}. It must match exactly, including "
                "whitespace and indentation; read the file first."
            )
        if count > 1 and not args.get("replace_all", False):
            raise WorkspaceError(
                f"old_string occurs {count} times in {shown}. Add surrounding context to make "
                "it unique, or set replace_all to true."
            )
        data = text.replace(old, new).encode("utf-8")
        if len(data) > self.limits.write_bytes:
            raise WorkspaceError(
                f"The edit would grow {shown} past {self.limits.write_bytes} bytes."
            )
        self._atomic_write(real, data)
        return ToolResult(f"Edited {shown}: replaced {count} occurrence{'s' * (count != 1)}.")

    def _atomic_write(self, real: str, data: bytes) -> None:
        """Write via a temp file and rename; ``real`` is a checked realpath."""
        parent = os.path.dirname(real)
        os.makedirs(parent, exist_ok=True)
        if os.path.realpath(parent) != parent:  # a symlink appeared under us
            raise PathRefused(f"The folder {parent} changed while writing; refused.")
        mode = 0o600  # new files are private (issue 12 item 11)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise WorkspaceError(f"{self.display(real)} is a directory.")
            mode = stat.S_IMODE(st.st_mode)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(real)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, real)  # rename never follows a symlink at ``real``
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    # --- listing and search --------------------------------------------------------------

    def _list_files(self, args: dict[str, Any]) -> ToolResult:
        limits = self.limits
        real = self.resolve(args.get("path") or ".")
        shown = self.display(real)
        if not os.path.isdir(real):
            if os.path.lexists(real):
                return ToolResult(shown)
            raise WorkspaceError(f"No such file or directory: {shown}")
        pattern = args.get("pattern")
        found: list[tuple[str, str]] = []  # (path, mark)
        capped = False
        if pattern is None:
            with os.scandir(real) as it:
                found = [(e.path, _mark(e)) for e in it]
        else:
            matcher = _pattern_matcher(pattern)
            depth = None if "**" in pattern else pattern.count("/") + 1
            for path, entry, rel in _walk(real, limits.walk_entries, depth):
                if entry is None:
                    capped = True
                elif matcher(rel):
                    found.append((path, _mark(entry)))
        if not found:
            what = f"match {pattern!r} under" if pattern is not None else "are in"
            return ToolResult(f"No entries {what} {shown}.")
        lines = [self.display(path) + mark for path, mark in sorted(found)]
        total = len(lines)
        lines = lines[: limits.list_entries]
        if total > limits.list_entries:
            lines.append(
                f"[Showing {limits.list_entries} of {total} entries; narrow the path or pattern.]"
            )
        if capped:
            lines.append(f"[Stopped after visiting {limits.walk_entries} entries.]")
        return ToolResult(_cap_chars("\n".join(lines), limits.output_chars))

    def _grep(self, args: dict[str, Any]) -> ToolResult:
        limits = self.limits
        try:
            regex = re.compile(args["pattern"], re.IGNORECASE if args.get("ignore_case") else 0)
        except re.error as exc:
            raise WorkspaceError(f"Invalid regular expression {args['pattern']!r}: {exc}.")
        real = self.resolve(args.get("path") or ".")
        paths, capped = self._grep_targets(real, args.get("glob"))
        out: list[str] = []
        used = searched = skipped = 0
        full = False
        for path in paths:
            try:
                fd = self.open_confined(path, self.display(path))
            except WorkspaceError:
                skipped += 1
                continue
            with os.fdopen(fd, "rb") as f:
                if os.fstat(fd).st_size > limits.grep_file_bytes:
                    skipped += 1
                    continue
                data = f.read(limits.grep_file_bytes + 1)
            if b"\x00" in data[:8192]:
                skipped += 1
                continue
            searched += 1
            shown = self.display(path)
            for number, line in enumerate(data.decode("utf-8", "replace").split("\n"), 1):
                if regex.search(line):
                    entry_text = f"{shown}:{number}:{line.rstrip(chr(13))[: limits.line_chars]}"
                    if (
                        len(out) >= limits.grep_matches
                        or used + len(entry_text) > limits.output_chars
                    ):
                        full = True
                        break
                    out.append(entry_text)
                    used += len(entry_text) + 1
            if full:
                break
        notes = []
        if full:
            notes.append(f"[Stopped at {len(out)} matches; narrow the pattern, path or glob.]")
        if capped:
            notes.append(f"[Stopped after visiting {limits.walk_entries} entries.]")
        if skipped:
            notes.append(
                f"[Skipped {skipped} binary or large (> {limits.grep_file_bytes} B) files.]"
            )
        if not out:
            head = f"No matches for {args['pattern']!r} ({searched} files searched)."
            return ToolResult("\n".join([head, *notes]))
        return ToolResult("\n".join([*out, *notes]))

    def _grep_targets(self, real: str, glob: str | None) -> tuple[list[str], bool]:
        """The regular files to search (no symlinks, no ``.git``); the bool says capped."""
        if os.path.isfile(real):
            return [real], False
        if not os.path.isdir(real):
            raise WorkspaceError(f"No such file or directory: {self.display(real)}")
        matcher = _pattern_matcher(glob) if glob else None
        by_path = glob is not None and "/" in glob
        paths: list[str] = []
        for path, entry, rel in _walk(real, self.limits.walk_entries, None, skip=(".git",)):
            if entry is None:
                return paths, True
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                continue
            if matcher is None or matcher(rel if by_path else entry.name):
                paths.append(path)
        return paths, False

    # --- web ----------------------------------------------------------------------------------

    def _web_fetch(self, args: dict[str, Any]) -> ToolResult:
        limits = self.limits
        max_chars = min(int(args.get("max_chars", limits.web_chars)), limits.web_max_chars)
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


def _lines(f: IO[bytes], max_bytes: int) -> Iterator[bytes]:
    """Yield lines without their newline, each cut at ``max_bytes`` (memory stays bounded)."""
    while raw := f.readline(max_bytes):
        if not raw.endswith(b"\n"):
            while (rest := f.readline(65536)) and not rest.endswith(b"\n"):
                pass  # skip the rest of an overlong line
        yield raw.rstrip(b"\r\n")


def _walk(
    top: str, max_entries: int, max_depth: int | None, skip: tuple[str, ...] = ()
) -> Iterator[tuple[str, os.DirEntry[str] | None, str]]:
    """Yield ``(path, entry, relative posix path)`` below ``top``; never follows symlinks.

    When ``max_entries`` is reached, yields one ``(top, None, "")`` marker and stops.
    """
    stack: list[tuple[str, str, int]] = [(top, "", 1)]
    seen = 0
    while stack:
        folder, prefix, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            seen += 1
            if seen > max_entries:
                yield top, None, ""
                return
            rel = prefix + entry.name
            yield entry.path, entry, rel
            if entry.name in skip:
                continue
            if entry.is_dir(follow_symlinks=False) and (max_depth is None or depth < max_depth):
                subdirs.append((entry.path, rel + "/", depth + 1))
        stack.extend(reversed(subdirs))


def _mark(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "@"
    return "/" if entry.is_dir(follow_symlinks=False) else ""


def glob_to_regex(pattern: str) -> str:
    """Translate a glob (``*``, ``?``, ``[...]``, ``**``) over ``/``-separated paths."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


def _pattern_matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("/") or ".." in pattern.split("/"):
        raise WorkspaceError(f"The pattern {pattern!r} must be relative and without '..'.")
    try:
        regex = re.compile(glob_to_regex(pattern.removeprefix("./")), re.DOTALL)
    except re.error as exc:
        raise WorkspaceError(f"Invalid glob pattern {pattern!r}: {exc}.")
    return lambda rel: regex.fullmatch(rel) is not None


def _cap_chars(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[Output truncated at {max_chars} characters.]"
