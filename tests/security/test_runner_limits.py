"""Issue 12 item 9: limits per runner, the process tree, and a stuck check on the host's clock.

A group with small limits; the agent's bash tries to go past each of them."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sec_rig import SecRig, require_bwrap

from carapace.limits import pids_cgroup_root, systemd_scope_usable
from carapace.timefmt import FakeClock

LIMITS = {"memory_mb": 256, "processes": 48, "file_size_mb": 16, "tmp_mb": 8,
          "tool_timeout_s": 3}  # fmt: skip
ALLOC = "python3 -c 'b = bytearray(600 * 1024 * 1024); print(\"ALLOCATED\", len(b))'"
FORK = (
    "python3 -c '\nimport os, time\nn = 0\nfor i in range(300):\n    try:\n        pid = os.fork()\n"
    "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
    '    n += 1\nprint("FORKED", n)\''
)


def _ask_all(rig: SecRig, commands: dict[str, str]) -> dict[str, str]:
    rig.script([rig.bash_rule(f"^{name}$", cmd, timeout_s=60) for name, cmd in commands.items()])

    async def go() -> dict[str, str]:
        async with rig:
            return {name: await rig.ask(name) for name in commands}

    return asyncio.run(go())


def _alive(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and b"bash" not in cmd:
            found.append(int(name))
    return found


def test_memory_file_size_tmp_and_wall_clock_are_bounded(tmp_path: Path) -> None:
    require_bwrap()
    rig = SecRig(tmp_path, settings={"limits": LIMITS})
    out = _ask_all(rig, {
        "alloc": ALLOC,
        "bigfile": "dd if=/dev/zero of=big.bin bs=1M count=64 2>&1; stat -c 'SIZE %s' big.bin",
        "tmpfill": "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; stat -c 'SIZE %s' /tmp/fill",
        "slow": "sleep 30; echo WOKE",
    })  # fmt: skip
    assert "MemoryError" in out["alloc"] and "ALLOCATED" not in out["alloc"], out["alloc"]
    assert "File size limit exceeded" in out["bigfile"] or "File too large" in out["bigfile"]
    assert f"SIZE {16 * 1024 * 1024}" in out["bigfile"], out["bigfile"]
    assert "No space left on device" in out["tmpfill"], out["tmpfill"]
    size = int(out["tmpfill"].split("SIZE ")[1].split()[0])
    assert size <= 8 * 1024 * 1024, out["tmpfill"]
    assert "Timed out after 3 s" in out["slow"] and "WOKE" not in out["slow"], out["slow"]


def test_fork_bomb_is_bounded(tmp_path: Path) -> None:
    require_bwrap()
    if os.geteuid() == 0 and not systemd_scope_usable() and pids_cgroup_root() is None:
        pytest.skip("root without a user systemd or a writable pids cgroup: RLIMIT_NPROC "
                    "does not apply to root (docs/sandbox.md, Limits)")  # fmt: skip
    rig = SecRig(tmp_path, settings={"limits": LIMITS})
    out = _ask_all(rig, {"bomb": FORK})["bomb"]
    forked = int(out.split("FORKED ")[1].split()[0])
    assert forked < LIMITS["processes"], out


def test_setsid_child_dies_with_the_command(tmp_path: Path) -> None:
    require_bwrap()
    marker = "4321.123"
    rig = SecRig(tmp_path)
    rig.script([rig.bash_rule("escape", f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & "
                                        f"(setsid sh -c 'sleep {marker}; true' </dev/null "
                                        f">/dev/null 2>&1 &); echo STARTED")])  # fmt: skip

    async def go() -> tuple[str, list[int]]:
        async with rig:
            out = await rig.ask("escape")
            return out, _alive(marker)  # checked while the runner still lives

    out, alive = asyncio.run(go())
    assert "STARTED" in out, out
    assert alive == [], "a setsid child outlived the bash command"


def test_future_heartbeat_does_not_keep_a_stuck_runner_alive(tmp_path: Path) -> None:
    require_bwrap()
    clock = FakeClock(datetime.now(UTC))
    rig = SecRig(tmp_path, clock=clock)
    rig.script([{"match": "hello", "reply": "hi"}])

    async def go() -> list[tuple[str, str]]:
        async with rig:
            assert await rig.ask("hello") == "hi"
            sid = rig.session_id()
            session = rig.host.sessions.get(sid)
            assert session is not None
            beat = rig.host.sessions.paths(session).heartbeat
            frozen = rig.group_dir / "frozen"
            rig.script([rig.bash_rule("freeze", f"kill -STOP $PPID; touch -d 2099-01-01 {beat}; "
                                                f"touch {frozen}")])  # fmt: skip
            content = '{"text": "freeze", "sender": "test", "senderId": "cli:local"}'
            from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID
            from carapace.channels.base import InboundEvent, InboundMessage
            from carapace.timefmt import iso, new_id

            await rig.host.route(InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None, InboundMessage(
                new_id("cli"), "chat", content, iso())))  # fmt: skip
            deadline = time.monotonic() + 30
            while not frozen.exists():
                assert time.monotonic() < deadline, "the agent never froze its runner"
                await asyncio.sleep(0.05)
            await rig.host.sweep_once(clock.advance(60))  # the host sees the future beat
            clock.advance(31 * 60)
            report = await rig.host.sweep_once(clock.now())
            return report.killed

    killed = asyncio.run(go())
    assert killed and killed[0][1].startswith("kill-"), killed
