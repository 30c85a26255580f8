"""The runner's process boundary (docs/sandbox.md "Process boundary").

* ``harden_self`` at start: ``PR_SET_DUMPABLE=0`` so no process of the same user — the
  agent's bash commands and pre-task scripts included — can open the runner's
  ``/proc/<pid>/environ`` or ``/proc/<pid>/mem`` or ptrace it (the kernel then requires
  ``CAP_SYS_PTRACE``, which nothing in the sandbox has); and ``PR_SET_CHILD_SUBREAPER`` so a
  command's orphans (``setsid``, double forks) stay the runner's descendants.
* ``kill_descendants`` after every command: SIGKILL to every process below the runner, then
  reap them; nothing a command started outlives it. The runner's MCP servers (each in its
  own session, found by the stderr pipe only the runner holds) are spared.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

from carapace.log import get_logger

logger = get_logger(__name__)

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
_state = {"reaper": False}  # set by harden_self: this process is a runner
_spared: set[int] = set()  # session ids of the runner's MCP servers (mcp_client)


def spare_session(sid: int) -> None:
    """``kill_descendants`` leaves the processes of session ``sid`` alone (an MCP server)."""
    _spared.add(sid)


def unspare_session(sid: int) -> None:
    _spared.discard(sid)


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def harden_self() -> bool:
    """Make this process unreadable to its own user's other processes; True when it held."""
    ok = _prctl(PR_SET_DUMPABLE, 0)
    if not ok:
        logger.warning("PR_SET_DUMPABLE failed: commands may read this runner's memory")
    _state["reaper"] = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return ok


def descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (from ``/proc/*/stat``), parents before children."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_descendants(rounds: int = 5) -> int:
    """SIGKILL every process below this one and reap what became our zombie child. Only in
    a runner (``harden_self`` made it the subreaper); elsewhere (tests calling the tools in
    process) a no-op, as the process's other children are not a command's."""
    if not _state["reaper"]:
        return 0
    me = os.getpid()
    killed = 0
    for _ in range(rounds):
        found = descendants(me)
        if _spared:
            found = [p for p in found if _session_of(p) not in _spared]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in found:  # our own children (orphans re-parented to us included): reap
            if _parent(pid) == me:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, 0)
    _reap()
    return killed


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
