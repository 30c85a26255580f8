"""Issue 12 item 5: no process the agent controls can read a secret the runner holds.

The agent's bash reads ``/proc/<pid>/environ``, ``cmdline`` and ``mem`` of every process it
can see and tries to ptrace them, looking for values the host gave the runner."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from sec_rig import SecRig, require_bwrap

MARKER = "sk-carapace-secret-marker-5f1e"
HOST_ONLY = "carapace-host-only-secret-77aa"
PROBE = Path(__file__).with_name("probe_secrets.py")


def _probe_rule(rig: SecRig, mode: str = "") -> None:
    shutil.copy(PROBE, rig.group_dir / "probe.py")

    def probe(value: str) -> str:
        half = len(value) // 2
        return f"python3 probe.py {value[:half]} {value[half:]} $PPID {mode}"

    command = f"{probe(MARKER)}; {probe(HOST_ONLY)}; env | grep -c -e sk-carapace -e host-only"
    rig.script([rig.bash_rule("probe", command)])


def test_sandboxed_bash_cannot_read_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_bwrap()
    monkeypatch.setenv("ANTHROPIC_API_KEY", MARKER)  # passed to runners until the proxy exists
    monkeypatch.setenv("CARAPACE_HOST_ONLY", HOST_ONLY)
    rig = SecRig(tmp_path, runner_env={"CARAPACE_TEST_TOKEN": MARKER})

    async def go() -> str:
        async with rig:
            _probe_rule(rig)
            return await rig.ask("probe")

    out = asyncio.run(go())
    assert "probed" in out, out  # the probe really ran
    assert "hits: none" in out and "hits: " + MARKER not in out, out
    assert out.count("hits: none") == 2, out
    assert "\n0\n" in out, out  # nothing of it in bash's own environment either


def test_unsandboxed_runner_gets_no_host_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sandbox: none`` with ``bash: allowed``: the runner's environment is an allowlist,
    and its memory stays closed to the commands it runs."""
    monkeypatch.setenv("CARAPACE_HOST_ONLY", HOST_ONLY)
    rig = SecRig(tmp_path, backend="subprocess", settings={"bash": "allowed", "sandbox": "none"},
                 runner_env={"CARAPACE_TEST_TOKEN": MARKER})  # fmt: skip

    async def go() -> tuple[str, int]:
        async with rig:
            _probe_rule(rig, "runner-only")
            out = await rig.ask("probe")
            [run] = rig.host.pool.running.values()
            assert run.handle.pid is not None
            return out, run.handle.pid

    out, runner_pid = asyncio.run(go())
    first, second = out.splitlines()[:2]
    assert "probed 1 process(es)" in first, out  # the runner, and only it
    # no host variable outside the allowlist, in the environment or anywhere in memory
    assert "/environ" not in second and "/mem" not in second, out
    assert "\n0\n" in out, out  # bash's own environment is minimal
    if os.geteuid() != 0:  # root's commands hold CAP_SYS_PTRACE: unsandboxed, nothing stops them
        assert first.endswith("hits: none"), out
    assert runner_pid > 0
