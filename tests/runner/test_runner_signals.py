"""A runner stops on SIGTERM wherever the signal lands. Its handler once logged and raised:
a SIGTERM that arrived while the runner was writing a log line (a write to a full stderr
pipe, retried after the signal) logged again inside that write, logging's "reentrant call"
error ended the handler before it noted anything, and the runner served on, up to its idle
exit. Found by a test that stopped a runner in its first milliseconds (1 run in ~10).
A real runner process, its stderr a real pipe."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from carapace.testing.runner_proc import run_env, runner_cmd
from carapace.testing.sessions import make_agent_dir, make_session


def _full_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"\n" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def _caught(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _writing_stderr(pid: int) -> bool:
    """Blocked in a write(2) to fd 2 (``/proc/<pid>/syscall``: number, then arguments). A
    normal user may not read that file of a runner (it made itself non-dumpable): then the
    runner asleep with its handlers installed is taken for it (its first log line, the pipe
    being full, is where it sleeps)."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except PermissionError:
        return state == "S"
    return state in ("S", "D") and len(fields) > 1 and fields[1] == "0x2"


def test_sigterm_inside_a_log_write_stops_the_runner(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path, mock_script=[{"match": "ping", "reply": "pong"}])
    r, w = _full_pipe()
    proc = subprocess.Popen(runner_cmd(session, agent_dir, "--idle-exit", "600"),
                            env=run_env(), stderr=w)  # fmt: skip
    os.close(w)
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        # the handlers are installed, and a log line waits for room in the pipe
        while not (_caught(proc.pid, signal.SIGTERM) and _writing_stderr(proc.pid)):
            assert proc.poll() is None, "the runner ended before its first log line"
            assert time.monotonic() < deadline, "the runner never blocked in a log write"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)  # lands inside that write
        reader = threading.Thread(target=lambda: out.extend(iter(lambda: os.read(r, 65536), b"")),
                                  daemon=True)  # fmt: skip
        reader.start()
        code = proc.wait(timeout=30)  # before: it served on, until its idle exit (600 s)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(r)
    text = b"".join(out).decode(errors="replace")
    assert "Logging error" not in text, text[-3000:]  # before: the handler's raise, swallowed
    assert code == 0, text[-2000:]
    assert "signal 15: stopped" in text
