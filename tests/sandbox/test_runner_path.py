"""A runner never imports code from the agent's folders at its start.

A runner's working folder is its agent group's folder, which the agent writes. ``python -m``
puts the working folder first on ``sys.path``, so a ``dataclasses.py`` or ``json.py`` the
agent left there would run inside the runner at its next start, before it hardens itself;
the backends start it with ``-P``. In the sandbox ``HOME`` is that folder too, so the user
site-packages (whose ``.pth`` files run code) is switched off there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from carapace.sandbox.bwrap import SandboxSpec, bwrap_argv
from carapace.sandbox.process import RunnerSpec, SubprocessBackend, runner_env
from carapace.testing.runner_proc import run_env
from carapace.testing.sessions import make_agent_dir, make_session, read_outbound, write_chat

PLANTED = "open({marker!r}, 'w').write('ran'); raise SystemExit(7)\n"


def plant(agent_dir: Path, marker: Path) -> None:
    for name in ("dataclasses.py", "json.py", "sqlite3.py"):
        (agent_dir / name).write_text(PLANTED.format(marker=str(marker)))
    pkg = agent_dir / "carapace"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLANTED.format(marker=str(marker)))


def test_runner_started_by_the_backend_ignores_modules_in_its_folder(tmp_path: Path) -> None:
    paths = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"})
    marker = tmp_path / "planted-code-ran"
    plant(agent_dir, marker)
    write_chat(paths, "hello")
    spec = RunnerSpec("sess-test", "ag-test", paths.root, agent_dir, idle_exit_s=0.3)
    argv = SubprocessBackend().argv(spec)
    result = subprocess.run(argv, cwd=agent_dir, env=run_env(), capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert not marker.exists(), result.stderr[-2000:]
    assert result.returncode == 0, result.stderr[-2000:]
    [reply] = read_outbound(paths)
    assert reply["content"]["text"].startswith("Mock reply")


def test_the_same_runner_without_the_flag_would_run_them(tmp_path: Path) -> None:
    """The check above can fail: ``python -m`` alone imports the planted module."""
    paths = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path)
    marker = tmp_path / "planted-code-ran"
    plant(agent_dir, marker)
    spec = RunnerSpec("sess-test", "ag-test", paths.root, agent_dir, idle_exit_s=0.3)
    argv = [a for a in SubprocessBackend().argv(spec) if a != "-P"]
    result = subprocess.run(argv, cwd=agent_dir, env=run_env(), capture_output=True, timeout=60)
    assert marker.exists() and result.returncode == 7


def test_sandbox_switches_off_the_user_site(tmp_path: Path) -> None:
    paths = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path)
    argv = bwrap_argv(SandboxSpec(session_dir=paths.root, agent_dir=agent_dir,
                                  runner_argv=["python3", "-c", "pass"]))  # fmt: skip
    pairs = {(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--setenv"}
    assert ("PYTHONNOUSERSITE", "1") in pairs
    assert ("HOME", str(agent_dir)) in pairs  # why it matters


def test_runner_env_keeps_only_absolute_python_path_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunnerSpec("s", "ag", tmp_path, tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/lib", "", "src", ".", "/usr/x"]))
    assert runner_env(spec, ())["PYTHONPATH"] == os.pathsep.join(["/opt/lib", "/usr/x"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep)  # only the working folder, twice
    assert "PYTHONPATH" not in runner_env(spec, ())
