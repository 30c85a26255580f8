"""Issue 12 item 6: pre-task scripts obey the group's bash policy and sandbox exactly as bash.

``bash: off`` refuses ``schedule_task(script=…)`` and existing script tasks are not run
(the chat is told); in a ``sandbox: none`` group a script gets a minimal environment, never
the host's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sec_rig import SecRig, add_script_task, require_bwrap

HOST_ONLY = "carapace-host-only-secret-4c2d"


def test_bash_off_refuses_schedule_task_with_a_script(tmp_path: Path) -> None:
    require_bwrap()
    rig = SecRig(tmp_path, settings={"bash": "off"})
    rig.script([{"match": "plant", "tool_calls": [{"name": "schedule_task", "arguments": {
        "prompt": "check", "processAfter": "2099-01-01T00:00:00Z",
        "script": "touch pwned-by-script"}}], "reply": "RESULT:{tool_result}"}])  # fmt: skip

    async def go() -> str:
        async with rig:
            return await rig.ask("plant")

    out = asyncio.run(go())
    assert "script refused: bash is off" in out, out


def test_bash_off_existing_script_task_is_not_run(tmp_path: Path) -> None:
    require_bwrap()
    rig = SecRig(tmp_path)
    rig.script([{"match": "hello", "reply": "hi"}, {"reply": "WOKEN BY TASK"}])
    pwned = rig.group_dir / "pwned-by-script"

    async def go() -> str:
        async with rig:
            assert await rig.ask("hello") == "hi"
            rig.set_settings({"bash": "off"})  # the runner restarts with it
            sid = rig.session_id()
            await rig.host.pool.stop(sid, "settings changed")
            add_script_task(rig, f"touch {pwned}; echo '{{\"wakeAgent\": true}}'")
            return await rig.reply()

    out = asyncio.run(go())
    assert "was not run" in out and "bash is off" in out, out
    assert not pwned.exists()


def test_unsandboxed_script_gets_no_host_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARAPACE_HOST_ONLY", HOST_ONLY)
    rig = SecRig(tmp_path, backend="subprocess", settings={"bash": "allowed", "sandbox": "none"})
    rig.script([{"match": "hello", "reply": "hi"}, {"reply": "WOKEN BY TASK"}])
    seen = rig.group_dir / "script-env.txt"

    async def go() -> str:
        async with rig:
            assert await rig.ask("hello") == "hi"
            add_script_task(rig, f"env > {seen}; cat /proc/$PPID/environ >> {seen}; echo go")
            return await rig.reply()

    assert asyncio.run(go()) == "WOKEN BY TASK"
    env = seen.read_text(errors="replace")
    assert "PATH=" in env  # the script ran
    assert HOST_ONLY not in env and "CARAPACE_HOST_ONLY" not in env
