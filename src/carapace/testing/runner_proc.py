"""A runner process on a test session: ``python -m carapace.runner`` with a clean
environment (no provider or carapace variables of the caller's), run once to idle exit."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from carapace.db.session import SessionPaths

#: the ``src`` folder this carapace is imported from (put first on the runner's path)
SRC = str(Path(__file__).resolve().parents[2])


def runner_cmd(paths: SessionPaths, agent_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "carapace.runner", "--session-dir", str(paths.root),
            "--agent-dir", str(agent_dir), *extra]  # fmt: skip


_tmp: str | None = None


def runners_tmp() -> str:
    """One temp folder per test process for the runners it starts itself (their
    ``TMPDIR``), removed at its exit and, named as a host's, swept by the next host's start
    when the process was killed: the runners a test kills leave nothing in ``/tmp``."""
    global _tmp
    if _tmp is None:  # named as sandbox.process.host_tmp_dir names them (a floor above)
        _tmp = tempfile.mkdtemp(prefix=f"carapace-tmp-{os.getpid()}-")
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


def run_env(**extra: str) -> dict[str, str]:
    """The caller's environment without ``ANTHROPIC_*``/``OPENAI_*``/``CARAPACE_*``, with
    this carapace first on ``PYTHONPATH`` and :func:`runners_tmp` as ``TMPDIR``; ``extra``
    last (it may replace any of that)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "OPENAI_", "CARAPACE_"))}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    env["TMPDIR"] = runners_tmp()
    env.update(extra)
    return env


def run_once(
    paths: SessionPaths, agent_dir: Path, *, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """One runner process until it goes idle (``--idle-exit 0.3``)."""
    return subprocess.run(runner_cmd(paths, agent_dir, "--idle-exit", "0.3"),
                          env=run_env(**env), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
