"""Runners start with ``python -S`` (issue 19, cold start): no ``site`` module, so no
``.pth`` files run in the runner; the host hands it carapace's folder and its own
site-packages on ``PYTHONPATH`` instead, so the provider SDKs still import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import carapace
from carapace.sandbox.process import (
    RunnerSpec,
    SubprocessBackend,
    runner_sys_path,
    with_runner_path,
)


def test_the_host_interpreter_gets_carapace_first_then_its_site_packages() -> None:
    path = runner_sys_path(sys.executable)
    assert path is not None
    assert path[0] == str(Path(carapace.__file__).parent.parent)
    import anthropic

    sdk_home = str(Path(anthropic.__file__).parent.parent)
    assert sdk_home in path


def test_another_interpreter_keeps_its_own_site(tmp_path: Path) -> None:
    other = tmp_path / "python3"
    other.write_text("#!/bin/sh\n")
    assert runner_sys_path(str(other)) is None
    spec = RunnerSpec("s1", "ag1", tmp_path / "s", tmp_path / "a", None, None, {})
    assert "-S" not in SubprocessBackend(python=str(other), spare=False).argv(spec)
    assert with_runner_path({"PYTHONPATH": "/x"}, str(other)) == {"PYTHONPATH": "/x"}


def test_a_runner_started_without_site_imports_carapace_and_the_sdks(tmp_path: Path) -> None:
    spec = RunnerSpec("s1", "ag1", tmp_path / "s", tmp_path / "a", None, None, {})
    argv = SubprocessBackend(spare=False).argv(spec)
    assert argv[:3] == [sys.executable, "-P", "-S"]
    env = with_runner_path({"PATH": os.environ.get("PATH", "/usr/bin"),
                            "PYTHONPATH": str(tmp_path)}, sys.executable)  # fmt: skip
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)  # given entries first
    code = (
        "import sys, anthropic, openai, carapace.runner.loop; "
        "print(sys.flags.no_site, 'site' in sys.modules, carapace.__file__)"
    )
    out = subprocess.run([*argv[:3], "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    no_site, site_loaded, where = out.stdout.split()
    assert (no_site, site_loaded) == ("1", "False")
    assert where == carapace.__file__
