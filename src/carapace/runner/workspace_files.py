"""The workspace's file tools: ``read_file``, ``write_file``, ``edit_file``, ``list_files``
and ``grep``. Each takes the ``Workspace`` (its confinement and limits) and the checked
arguments; paths go through ``ws.resolve`` and files are opened with ``ws.open_confined``
(never following a link), so these functions hold no path policy of their own."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator

from carapace.runner.providers.base import ToolResult
from carapace.runner.workspace_specs import PathRefused, WorkspaceError

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import IO, Any

    from carapace.runner.workspace import Workspace


def read_file(ws: Workspace, args: dict[str, Any]) -> ToolResult:
    limits = ws.limits
    real = ws.resolve(args["path"])
    shown = ws.display(real)
    offset = int(args.get("offset", 1))
    limit = min(int(args.get("limit", limits.read_lines)), limits.read_lines)
    out: list[str] = []
    used = 0
    last = offset - 1
    more = False
    with os.fdopen(ws.open_confined(real, shown), "rb") as f:
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


def write_file(ws: Workspace, args: dict[str, Any]) -> ToolResult:
    data = args["content"].encode("utf-8")
    if len(data) > ws.limits.write_bytes:
        raise WorkspaceError(
            f"The content is {len(data)} bytes; write_file accepts at most {ws.limits.write_bytes}."
        )
    if args["path"].endswith("/"):
        raise WorkspaceError(f"The path {args['path']!r} names a folder, not a file.")
    real = ws.resolve(args["path"], write=True)
    existed = os.path.lexists(real)
    _atomic_write(ws, real, data)
    verb = "Overwrote" if existed else "Created"
    return ToolResult(f"{verb} {ws.display(real)} ({len(data)} bytes).")


def edit_file(ws: Workspace, args: dict[str, Any]) -> ToolResult:
    old, new = args["old_string"], args["new_string"]
    if not old:
        raise WorkspaceError("old_string is empty; use write_file to create a file.")
    if old == new:
        raise WorkspaceError("old_string and new_string are the same; nothing to change.")
    real = ws.resolve(args["path"], write=True)
    shown = ws.display(real)
    with os.fdopen(ws.open_confined(real, shown), "rb") as f:
        if os.fstat(f.fileno()).st_size > ws.limits.write_bytes:
            raise WorkspaceError(f"{shown} is larger than {ws.limits.write_bytes} bytes.")
        raw = f.read(ws.limits.write_bytes + 1)
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
    if len(data) > ws.limits.write_bytes:
        raise WorkspaceError(f"The edit would grow {shown} past {ws.limits.write_bytes} bytes.")
    _atomic_write(ws, real, data)
    return ToolResult(f"Edited {shown}: replaced {count} occurrence{'s' * (count != 1)}.")


def _atomic_write(ws: Workspace, real: str, data: bytes) -> None:
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
            raise WorkspaceError(f"{ws.display(real)} is a directory.")
        mode = stat.S_IMODE(st.st_mode)
    import tempfile  # not at the runner's start

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


def list_files(ws: Workspace, args: dict[str, Any]) -> ToolResult:
    limits = ws.limits
    real = ws.resolve(args.get("path") or ".")
    shown = ws.display(real)
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
    lines = [ws.display(path) + mark for path, mark in sorted(found)]
    total = len(lines)
    lines = lines[: limits.list_entries]
    if total > limits.list_entries:
        lines.append(
            f"[Showing {limits.list_entries} of {total} entries; narrow the path or pattern.]"
        )
    if capped:
        lines.append(f"[Stopped after visiting {limits.walk_entries} entries.]")
    return ToolResult(_cap_chars("\n".join(lines), limits.output_chars))


def grep(ws: Workspace, args: dict[str, Any]) -> ToolResult:
    limits = ws.limits
    try:
        regex = re.compile(args["pattern"], re.IGNORECASE if args.get("ignore_case") else 0)
    except re.error as exc:
        raise WorkspaceError(f"Invalid regular expression {args['pattern']!r}: {exc}.")
    real = ws.resolve(args.get("path") or ".")
    paths, capped = _grep_targets(ws, real, args.get("glob"))
    out: list[str] = []
    used = searched = skipped = 0
    full = False
    for path in paths:
        try:
            fd = ws.open_confined(path, ws.display(path))
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
        shown = ws.display(path)
        for number, line in enumerate(data.decode("utf-8", "replace").split("\n"), 1):
            if regex.search(line):
                entry_text = f"{shown}:{number}:{line.rstrip(chr(13))[: limits.line_chars]}"
                if len(out) >= limits.grep_matches or used + len(entry_text) > limits.output_chars:
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
        notes.append(f"[Skipped {skipped} binary or large (> {limits.grep_file_bytes} B) files.]")
    if not out:
        head = f"No matches for {args['pattern']!r} ({searched} files searched)."
        return ToolResult("\n".join([head, *notes]))
    return ToolResult("\n".join([*out, *notes]))


def _grep_targets(ws: Workspace, real: str, glob: str | None) -> tuple[list[str], bool]:
    """The regular files to search (no symlinks, no ``.git``); the bool says capped."""
    if os.path.isfile(real):
        return [real], False
    if not os.path.isdir(real):
        raise WorkspaceError(f"No such file or directory: {ws.display(real)}")
    matcher = _pattern_matcher(glob) if glob else None
    by_path = glob is not None and "/" in glob
    paths: list[str] = []
    for path, entry, rel in _walk(real, ws.limits.walk_entries, None, skip=(".git",)):
        if entry is None:
            return paths, True
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            continue
        if matcher is None or matcher(rel if by_path else entry.name):
            paths.append(path)
    return paths, False


# --- web ----------------------------------------------------------------------------------


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
