"""The agent's system prompt: base instructions, the group's memory files, tools, destinations.

``compose_system_prompt(agent_dir, destinations, assistant_name, …)`` joins, with blank lines:

1. ``# You are <name>`` and a sentence about the name (when a name is configured);
2. the base instructions (``BASE_INSTRUCTIONS``; NanoClaw's ``container/CLAUDE.md``);
3. ``<agent_dir>/CLAUDE.md`` (operator-written), ``<agent_dir>/CLAUDE.local.md`` (the
   agent's memory) and ``<agent_dir>/../global/CLAUDE.md`` when present, each under a
   heading naming the file. Lines that are only ``@path`` are Claude Code imports (how
   NanoClaw composes a group's ``CLAUDE.md``): the file is inlined when it lies inside the
   group or global folder, and dropped otherwise (NanoClaw's shared base, ``/app/CLAUDE.md``,
   is replaced by the base instructions above). Left out (``memory=False``) for a provider
   that reads these files itself (``claude``: Claude Code, as in NanoClaw);
4. ``## Your workspace``: the folders and the workspace tools the group's settings enable
   (when ``settings`` is given);
5. ``## Sending messages`` with the destinations (spec §7.1 wording, adapted: a plain reply
   goes back to where the message came from, so ``<message to="…">`` is needed only for
   other destinations).

The runner composes it for every batch, so destination changes show up at once (W-8); the
memory files' text is kept between batches while the files are unchanged, and so is the
whole prompt while nothing it was made of changed: the arguments, and each file read
(``FileCache``: one ``lstat`` a file instead of composing again, issue 19).
The admin CLI (``carapace admin groups prompt``) shows the same text.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from carapace import safefs
from carapace.runner.settings import AgentSettings

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from carapace.watch import FolderWatch

    class NamedDestination(Protocol):
        @property
        def name(self) -> str: ...

        @property
        def display_name(self) -> str | None: ...


MAX_FILE_CHARS = 100_000
# First line of a host-composed CLAUDE.md (``carapace.host.groupfiles``; kept here so the
# runner imports nothing of the host).
COMPOSED_MARKER = "<!-- composed by the host: edits here are lost; use CLAUDE.local.md -->"
MAX_IMPORT_DEPTH = 5
_IMPORT_RE = re.compile(r"^@(\S+)$")

BASE_INSTRUCTIONS = """\
You are a personal assistant running inside carapace. People and other agents reach you
through chat apps; each incoming message is shown as XML (`<message>`, `<task>`,
`<webhook>`) with who sent it, when, and from which destination (`from="name"`).

- Be concise. Report outcomes, not process.
- Your working folder is the agent group's folder. `CLAUDE.local.md` there is your
  per-group memory: store substantive facts and decisions in files and keep an index of
  them in `CLAUDE.local.md`. This session's transcript is under the session's
  `conversations/` folder.
- Attachments people send are saved under the session's `inbox/` folder; the message
  shows the path.
- Use the scheduling tools for reminders and recurring work, `ask_user_question` when you
  need a decision, and `send_file` to send a file."""


def _label(dest: NamedDestination) -> str:
    if dest.display_name and dest.display_name != dest.name:
        return f"`{dest.name}` ({dest.display_name})"
    return f"`{dest.name}`"


def identity_section(assistant_name: str) -> str:
    if not assistant_name:
        return ""
    return (
        f"# You are {assistant_name}\n\n"
        f"Your name is **{assistant_name}**. Use it when asked who you are, when "
        "introducing yourself, and when signing a message that asks for a signature."
    )


def destinations_section(destinations: Sequence[NamedDestination]) -> str:
    dests = sorted(destinations, key=lambda d: d.name)
    head = "## Sending messages\n\n"
    if not dests:
        return head + (
            "There are currently no configured destinations, so besides replying to the "
            "conversation you are in, no messages can be sent until an admin wires one up."
        )
    if len(dests) == 1:
        head += f"Your destination is {_label(dests[0])}."
    else:
        head += "You can send to the following destinations:\n\n"
        head += "\n".join(f"- {_label(d)}" for d in dests)
    return (
        head + "\n\nWhen replying, default to addressing the destination it came `from` (every "
        'inbound `<message>` carries a `from="name"` attribute): your plain reply goes there. '
        "Wrap each delivered message for another destination in a "
        '`<message to="name">...</message>` block; several blocks address several '
        "destinations. Wrap thinking that must not be sent in `<internal>...</internal>`."
        + "\n\nThe `send_message` tool delivers the same way but in the middle of a turn, "
        "which is useful for quick acknowledgements. Each call and each `<message>` block "
        "arrives as a separate message."
    )


def _read(path: str, roots: Sequence[str], files: FileCache | None = None) -> str:
    """The text of ``path`` if it lies inside one of ``roots``, read without following any
    link on the way (``safefs``): the group folder is the agent's, and the host composes
    this prompt too (``admin groups prompt``). A link, a FIFO or a missing file reads as ""."""
    for root in roots:
        if not _inside(path, [root]) or path == root:
            continue
        rel = os.path.relpath(path, root)
        return files.read(root, rel) if files is not None else _read_beneath(root, rel)
    return ""


def _read_beneath(root: str, rel: str) -> str:
    try:
        data = safefs.read_beneath(root, rel, MAX_FILE_CHARS * 4, truncate=True)
    except (OSError, safefs.UnsafePathError):
        return ""
    return data.decode("utf-8", errors="replace")[:MAX_FILE_CHARS].strip()


# A file modified this recently is not kept: file times are taken from a coarse clock, so
# a second write of the same size within the same tick would leave the same stat (git's
# "racily clean" rule).
RACY_NS = 1_000_000_000


class FileCache:
    """The memory files a runner read before (issue 19: not read again every turn).

    A file's text is reused while ``lstat`` shows the same regular file (device, inode,
    size, modification and change time). Only a name directly in a folder that was resolved
    once is kept, so the ``lstat`` follows no link; anything else (a link, a FIFO, a missing
    file, a path with folders) is read through ``safefs`` every time, as without the cache.
    The folders' real paths are resolved once (they are the host's choice).

    A file changed within :data:`RACY_NS` is not kept by its ``lstat`` alone (a rewrite in
    the same clock tick can leave the same one). With ``watch`` (a :class:`FolderWatch` on
    the runner's own watcher) the folders read from are also watched (inotify, added
    before the file is looked at): such a file is kept as well, when it has one link (a
    write through another name would tell another folder), since any later write (at its
    close), rename or removal in that folder drops it, and a prompt made with it, at the
    next :meth:`prompt`. A runner started moments
    after the host wrote its ``CLAUDE.md`` composed its prompt again at every turn of its
    first second (~0.1-0.2 ms each). Where inotify cannot watch, the rule is as without."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns, *,
                 watch: FolderWatch | None = None) -> None:  # fmt: skip
        self.clock_ns = clock_ns
        self._watch = watch
        self._files: dict[str, tuple[tuple[int, ...], str]] = {}
        self._real: dict[str, str] = {}
        # while a prompt is composed: (path, identity or None for a missing file) of each
        # file read; None: one was read that the cache does not keep (no prompt kept)
        self._reads: list[tuple[str, tuple[int, ...] | None]] | None = None
        # the last prompt: (its arguments, the files it read, its text)
        self._prompt: tuple[tuple[Any, ...], list[tuple[str, tuple[int, ...] | None]], str] | None
        self._prompt = None

    def prompt(self, key: tuple[Any, ...], compose: Callable[[], str]) -> str:
        """``compose()``, or the text it gave last time for the same ``key`` while every file
        it read is still the one it read (``lstat``); kept only when each of those files
        was one the cache keeps (a name directly in a folder, a regular file, not racily
        new) or missing."""
        if self._watch is not None:
            self._forget(self._watch.changed())
        last = self._prompt
        if (
            last is not None
            and last[0] == key
            and all(_identity_or_none(path) == ident for path, ident in last[1])
        ):
            return last[2]
        self._prompt = None
        self._reads = []
        try:
            text = compose()
        finally:
            reads, self._reads = self._reads, None
        if reads is not None:
            self._prompt = (key, reads, text)
        return text

    def _forget(self, changed: set[str] | None) -> None:
        """Drop what the watch says changed (None: anything may have)."""
        if changed is None:
            self._files.clear()
            self._prompt = None
            return
        if not changed:
            return
        for path in changed:
            self._files.pop(path, None)
        if self._prompt is not None and any(p in changed for p, _ in self._prompt[1]):
            self._prompt = None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def _note(self, path: str, ident: tuple[int, ...] | None) -> None:
        if self._reads is not None:
            self._reads.append((path, ident))

    def _untracked(self) -> None:
        self._reads = None  # (while recording: this prompt is not kept)

    def realpath(self, path: str | Path) -> str:
        key = os.fspath(path)
        real = self._real.get(key)
        if real is None:
            real = self._real[key] = os.path.realpath(key)
        return real

    def read(self, root: str, rel: str) -> str:
        if os.sep in rel or rel in (os.curdir, os.pardir):
            self._untracked()
            return _read_beneath(root, rel)
        path = os.path.join(root, rel)
        watched = self._watch is not None and self._watch.watch(root)  # (before the lstat)
        try:
            before = file_identity(path)
        except FileNotFoundError:
            self._files.pop(path, None)
            self._note(path, None)
            return ""  # what reading it would give
        if before is None:
            self._files.pop(path, None)
            self._untracked()
            return _read_beneath(root, rel)
        hit = self._files.get(path)
        if hit is not None and hit[0] == before:
            self._note(path, before)
            return hit[1]
        text = _read_beneath(root, rel)
        try:
            after = file_identity(path)
        except FileNotFoundError:
            after = None
        if after == before and (settled(before, self.clock_ns())
                                or (watched and before[_NLINK] == 1)):  # fmt: skip
            self._files[path] = (before, text)
            self._note(path, before)
        else:
            self._files.pop(path, None)
            self._untracked()
        return text


_NLINK = 5  # where the link count is in a file_identity


def file_identity(path: str) -> tuple[int, ...] | None:
    """What identifies a regular file's content (``lstat``: a link is never followed): its
    device, inode, size, modification and change times, link count; None for anything
    else. Raises ``FileNotFoundError`` for a missing file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


def settled(identity: tuple[int, ...], now_ns: int) -> bool:
    """Whether a file of this :func:`file_identity` may be kept by its identity: changed
    more than :data:`RACY_NS` before ``now_ns`` (a rewrite after that changes its times)."""
    return now_ns - identity[4] > RACY_NS


def _identity_or_none(path: str) -> tuple[int, ...] | None:
    """:func:`file_identity`, None for a missing file; anything but a regular file gives a
    value no kept read has (so a prompt that read the file is composed again)."""
    try:
        return file_identity(path) or (-1,)
    except FileNotFoundError:
        return None


def _inside(real: str, roots: Sequence[str]) -> bool:
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def expand_imports(
    text: str, base: str, roots: Sequence[str], depth: int = 0, files: FileCache | None = None
) -> str:
    """Inline ``@path`` lines (Claude Code imports) whose target lies inside ``roots``."""
    out: list[str] = []
    for line in text.splitlines():
        m = _IMPORT_RE.match(line.strip())
        if m is None:
            out.append(line)
            continue
        if depth >= MAX_IMPORT_DEPTH or m.group(1).startswith("~"):
            continue
        target = os.path.normpath(os.path.join(base, m.group(1)))
        inner = _read(target, roots, files)
        if inner:
            out.append(expand_imports(inner, os.path.dirname(target), roots, depth + 1, files))
    return "\n".join(out).strip()


def memory_sections(agent_dir: Path, files: FileCache | None = None) -> list[str]:
    """The memory files' sections; ``files``: the runner's cache of them (see FileCache)."""
    global_dir = agent_dir.parent / "global"
    # The folders themselves are the host's choice (resolved once); nothing inside them is
    # followed.
    real = files.realpath if files is not None else os.path.realpath
    agent_root, global_root = real(agent_dir), real(global_dir)
    roots = [agent_root, global_root]
    memory_files = (
        ("Group instructions (CLAUDE.md)", agent_root, "CLAUDE.md"),
        ("Group memory (CLAUDE.local.md)", agent_root, "CLAUDE.local.md"),
        ("Shared memory (global/CLAUDE.md, read-only)", global_root, "CLAUDE.md"),
    )
    out: list[str] = []
    for title, root, name in memory_files:
        # (a name directly in the folder: what _read would make of join(root, name))
        raw = files.read(root, name) if files is not None else _read_beneath(root, name)
        if name == "CLAUDE.md" and raw.startswith(COMPOSED_MARKER):
            continue  # the host's composed file: its sources are read directly
        text = expand_imports(raw, root, roots, files=files)
        if text:
            out.append(f"## {title}\n\n{text}")
    return out


def workspace_section(
    agent_dir: Path,
    settings: AgentSettings,
    *,
    session_dir: Path | None = None,
    sandboxed: bool | None = None,
    tool_names: Mapping[str, str] | None = None,
) -> str:
    """What the workspace tools can reach and which of them this group has; ``tool_names``
    renames them for a provider that offers them under other names (``claude``)."""
    names = tool_names or {}

    def n(tool: str) -> str:
        return names.get(tool, tool)

    lines = [
        "## Your workspace",
        "",
        f"- Working folder (the agent group's folder, read-write): `{agent_dir}`. Relative "
        "paths start here; keep your notes and files in it.",
    ]
    if session_dir is not None:
        lines.append(
            f"- This conversation's session folder (read-write; attachments in `inbox/`, "
            f"files to send in `outbox/`): `{session_dir}`."
        )
    global_dir = agent_dir.parent / "global"
    if global_dir.is_dir():
        lines.append(f"- Shared folder of all agent groups (read-only): `{global_dir}`.")
    lines.append(
        "- File tools refuse anything outside these folders and the runner's temp folder "
        "(symlinks are followed and re-checked)."
    )
    tools = [t for t in ("read_file", "write_file", "edit_file", "list_files", "grep")
             if t in settings.tools]  # fmt: skip
    if tools:
        lines.append("- File tools: " + ", ".join(f"`{n(t)}`" for t in tools) + ".")
    if "web_fetch" in settings.tools:
        lines.append(
            f"- `{n('web_fetch')}` fetches a web page as text."
            if settings.web
            else f"- Web access (`{n('web_fetch')}`) is disabled for this group."
        )
    if sandboxed is None:
        mode = settings.bash if "bash" in settings.tools else "off"
        on = {"allowed": True, "sandboxed": None, "off": False}[mode]
    else:
        on = settings.bash_mode(sandboxed)[0] != "off"
    if on is None:
        lines.append(f"- `{n('bash')}` runs shell commands when the runner is sandboxed.")
    elif on:
        lines.append(f"- `{n('bash')}` runs shell commands in the working folder (with a timeout).")
    else:
        lines.append(f"- Shell commands (`{n('bash')}`) are disabled for this group.")
    lines.append(
        f"- Update `CLAUDE.local.md` ({n('edit_file')} or {n('write_file')}) when you learn "
        "something worth remembering; it is part of these instructions at your next message."
    )
    return "\n".join(lines)


def compose_system_prompt(
    agent_dir: Path,
    destinations: Sequence[NamedDestination],
    assistant_name: str,
    *,
    settings: AgentSettings | Mapping[str, Any] | None = None,
    session_dir: Path | None = None,
    sandboxed: bool | None = None,
    memory: bool = True,
    tool_names: Mapping[str, str] | None = None,
    files: FileCache | None = None,
) -> str:
    """The whole system prompt for one agent group's runner (see the module docstring).

    ``memory=False`` leaves the memory files out, for a provider that loads them itself
    (Claude Code reads ``CLAUDE.md`` and ``CLAUDE.local.md``): never included twice.
    ``files``: the runner's cache of the memory files (:class:`FileCache`), which keeps
    the last prompt while nothing it was made of changed."""
    if files is None:
        return _compose(agent_dir, destinations, assistant_name, settings=settings,
                        session_dir=session_dir, sandboxed=sandboxed, memory=memory,
                        tool_names=tool_names, files=None)  # fmt: skip
    key = (agent_dir, tuple(destinations), assistant_name, settings, session_dir, sandboxed,
           memory, None if tool_names is None else tuple(tool_names.items()),
           settings is not None and os.path.isdir(os.path.join(os.path.dirname(
               os.fspath(agent_dir)), "global")))  # fmt: skip
    return files.prompt(key, lambda: _compose(
        agent_dir, destinations, assistant_name, settings=settings, session_dir=session_dir,
        sandboxed=sandboxed, memory=memory, tool_names=tool_names, files=files,
    ))  # fmt: skip


def _compose(
    agent_dir: Path,
    destinations: Sequence[NamedDestination],
    assistant_name: str,
    *,
    settings: AgentSettings | Mapping[str, Any] | None,
    session_dir: Path | None,
    sandboxed: bool | None,
    memory: bool,
    tool_names: Mapping[str, str] | None,
    files: FileCache | None,
) -> str:
    agent_dir = Path(agent_dir)
    workspace = ""
    if settings is not None:
        parsed = settings if isinstance(settings, AgentSettings) else AgentSettings.parse(settings)
        workspace = workspace_section(
            agent_dir, parsed, session_dir=session_dir, sandboxed=sandboxed,
            tool_names=tool_names,
        )  # fmt: skip
    parts = [
        identity_section(assistant_name),
        BASE_INSTRUCTIONS,
        *(memory_sections(agent_dir, files) if memory else ()),
        workspace,
        destinations_section(destinations),
    ]
    return "\n\n".join(p for p in parts if p)
