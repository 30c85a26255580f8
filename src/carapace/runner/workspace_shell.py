"""The ``bash`` tool's engine: run one command in its own process group, capture its output.

The command runs in a new session (so it and everything it starts share one process
group), under the group's per-command limits (``preexec``), with stdin at ``/dev/null`` and stdout+stderr on one pipe drained by a thread that
keeps only the head and tail. When the command returns or times out the whole group gets
SIGKILL, sent while the leader is still an unreaped zombie so its id cannot be reused; then
every process left below the runner (``setsid`` children, double forks) is killed as well.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping

from carapace.runner.procs import kill_descendants
from carapace.runner.providers.base import ToolResult

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import IO


def run_shell(
    command: str,
    *,
    cwd: str,
    env: Mapping[str, str],
    timeout: float,
    max_chars: int,
    preexec: Callable[[], None] | None = None,
) -> ToolResult:
    """Run ``command`` with ``bash -c`` (``sh`` if bash is missing); never waits past timeout."""
    import shutil  # not at the runner's start: most turns run no command
    import subprocess

    shell = shutil.which("bash", path=env.get("PATH")) or "/bin/sh"
    proc = subprocess.Popen(
        [shell, "-c", command],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec,
    )
    assert proc.stdout is not None
    capture = _Capture(proc.stdout, max_chars)
    capture.start()
    exited = _wait_without_reaping(proc.pid, timeout)
    # Kill the group while the leader is still an unreaped zombie, so its id cannot
    # have been reused: this ends background jobs too, and on timeout everything.
    _kill_group(proc.pid)
    code = proc.wait()
    kill_descendants()  # what left the group (setsid, double fork) dies too
    capture.join(timeout=2.0)
    parts = [capture.text().rstrip("\n") or "(no output)"]
    if capture.is_alive():
        parts.append("[Output may be incomplete: a process left the group and holds it.]")
    if not exited:
        parts.append(
            f"[Timed out after {timeout:g} s; the command's whole process group was killed.]"
        )
    elif code < 0:
        parts.append(f"[Killed by signal {-code}.]")
    else:
        parts.append(f"[Exit code {code}.]")
    return ToolResult("\n".join(parts), is_error=not exited or code != 0)


class _Capture(threading.Thread):
    """Drain a pipe, keeping the head and the tail of the output within a char budget."""

    def __init__(self, stream: IO[bytes], max_chars: int) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.max_chars = max_chars
        self.keep = max_chars * 2  # bytes kept at each end: enough for max_chars / 2 chars
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def run(self) -> None:
        fd = self.stream.fileno()
        try:
            while chunk := os.read(fd, 65536):
                self.total += len(chunk)
                room = self.keep - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                self.tail += chunk
                if len(self.tail) > self.keep:
                    del self.tail[: len(self.tail) - self.keep]
        except OSError:
            pass
        finally:
            self.stream.close()

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped == 0:
            whole = (self.head + self.tail).decode("utf-8", "replace")
            if len(whole) <= self.max_chars:
                return whole
            head, tail = whole[: self.max_chars // 2], whole[-(self.max_chars // 2) :]
        else:
            head = self.head.decode("utf-8", "replace")[: self.max_chars // 2]
            tail = self.tail.decode("utf-8", "replace").lstrip("\ufffd")[-(self.max_chars // 2) :]
        return (
            f"{head}\n[... output truncated: {self.total} bytes in all; the middle is omitted "
            f"...]\n{tail}"
        )


def _wait_without_reaping(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit, leaving it a zombie; False on timeout."""
    done = threading.Event()

    def waiter() -> None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        finally:
            done.set()

    threading.Thread(target=waiter, daemon=True).start()
    return done.wait(timeout)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
