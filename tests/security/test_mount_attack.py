"""Attack (issue 12, item 14): the mount allowlist lists the carapace home, ``/``, a system
folder or the user's credentials, or a group asks for them through a link; the bwrap builder
is handed a mount nobody validated. None of them may reach a sandbox."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path, PurePosixPath

import pytest
from test_bind_escape import MARKER, _ask, needs_bwrap

from carapace.bootstrap import init_home
from carapace.config import Home
from carapace.db import groups
from carapace.db.central import open_central
from carapace.errors import ConfigError, ValidationError
from carapace.sandbox.bwrap import SandboxSpec, bwrap_argv
from carapace.sandbox.mounts import AllowedRoot, Mount, MountRequest, validate_mount


def _roots(*paths: str | Path) -> list[AllowedRoot]:
    return [AllowedRoot(Path(os.path.realpath(p)), True) for p in paths]


@pytest.mark.parametrize("which", ["home", "inside-home", "parent-of-home", "root", "proc",
                                   "sys", "dev", "ssh", "user-home"])  # fmt: skip
def test_never_mountable_even_when_listed(tmp_path: Path, which: str) -> None:
    home = tmp_path / "carapace-home"
    (home / "data").mkdir(parents=True)
    user_ssh = Path(os.path.expanduser("~/.ssh"))
    path = {
        "home": home, "inside-home": home / "data", "parent-of-home": tmp_path, "root": Path("/"),
        "proc": Path("/proc/self"), "sys": Path("/sys"), "dev": Path("/dev"),
        "ssh": user_ssh, "user-home": Path(os.path.expanduser("~")),
    }[which]  # fmt: skip
    if which == "ssh":
        user_ssh.mkdir(mode=0o700, exist_ok=True)
    with pytest.raises(ValidationError):
        validate_mount(MountRequest(str(path), "x", readonly=True), _roots(path), home=home)


def test_a_link_in_the_host_path_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "photos"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    with pytest.raises(ValidationError, match="symbolic link"):
        validate_mount(MountRequest(str(tmp_path / "alias"), "p"), _roots(tmp_path), home=None)
    ok = validate_mount(MountRequest(str(real), "p"), _roots(tmp_path), home=None)
    assert ok.host_path == real


@pytest.mark.parametrize("bad", ["home", "root", "proc", "escape"])
def test_bwrap_builder_rechecks_what_it_is_handed(tmp_path: Path, bad: str) -> None:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    session, agent = tmp_path / "s", tmp_path / "a"
    session.mkdir()
    agent.mkdir()
    mount = {
        "home": Mount(home, PurePosixPath("/workspace/extra/h")),
        "root": Mount(Path("/"), PurePosixPath("/workspace/extra/r")),
        "proc": Mount(Path("/proc"), PurePosixPath("/workspace/extra/p")),
        "escape": Mount(tmp_path, PurePosixPath("/workspace/extra/../../usr/x")),
    }[bad]
    spec = SandboxSpec(session_dir=session, agent_dir=agent, runner_argv=["true"],
                       mounts=[mount], home=home)  # fmt: skip
    with pytest.raises(ConfigError, match="refusing"):
        bwrap_argv(spec)


@needs_bwrap
def test_listed_home_is_not_visible_to_the_agent(tmp_path: Path) -> None:
    """End to end: the owner lists the home itself; the group asks for it; the agent's bash
    finds nothing of the home in the sandbox and the runner still answers."""
    home = Home(tmp_path / "home")
    init_home(home)
    (home.root / "secret-in-home.txt").write_text(MARKER)
    home.config_file.write_text(f"mount_allowlist = [{json.dumps(str(home.root))}]\n")
    db = open_central(home.central_db)
    try:
        [group] = [g for g in groups.list_agent_groups(db) if g.folder == "main"]
        groups.update_container_config(
            db, group.id, {"additional_mounts": [{"hostPath": str(home.root),
                                                   "containerPath": "home"}]})  # fmt: skip
    finally:
        db.close()
    look = "cat /workspace/extra/home/secret-in-home.txt 2>&1; ls /workspace/extra 2>&1; true"
    rules = [{"match": "look", "tool_calls": [{"name": "bash", "arguments": {"command": look}}],
              "reply": "L: {tool_result}"}]  # fmt: skip
    (home.group_dir("main") / "mock-script.json").write_text(json.dumps(rules))
    seen = asyncio.run(_ask(home, "look"))
    assert seen.startswith("L:"), seen
    assert MARKER not in seen
