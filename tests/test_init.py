"""``carapace init``: first run creates the default agent; a second run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carapace.bootstrap import init_home
from carapace.config import Home
from carapace.db import destinations, groups, messaging, users
from carapace.db.central import open_central


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carapace", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_init_twice_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = run_cli("init", "--home", str(home), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["changed"] and len(report["created"]) == 4
    second = run_cli("init", "--home", str(home))
    assert second.returncode == 0
    assert "nothing changed" in second.stdout
    assert (home / "groups" / "main" / "CLAUDE.local.md").is_file()
    db = open_central(home / "data" / "v2.db")
    (ag,) = groups.list_agent_groups(db)
    assert ag.folder == "main"
    assert users.owners(db) == ["cli:local"]
    mg = messaging.get_messaging_group_by_platform(db, "cli", "local")
    assert mg is not None and mg.unknown_sender_policy == "public"
    (w,) = messaging.wirings_for_chat(db, mg.id)
    assert (w.agent_group_id, w.engage_mode, w.engage_pattern) == (ag.id, "pattern", ".")
    (dest,) = destinations.list_destinations(db, ag.id)
    assert (dest.local_name, dest.target_id) == ("cli", mg.id)
    assert groups.get_container_config(db, ag.id) is not None


def test_home_from_environment(tmp_path: Path) -> None:
    result = run_cli("init", env={"CARAPACE_HOME": str(tmp_path / "envhome")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "envhome" / "data" / "v2.db").is_file()


def test_bad_home_is_one_line_and_non_zero(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    result = run_cli("init", "--home", str(afile))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a directory" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_home(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    result = run_cli("init", "--home", str(ro / "h"))
    assert result.returncode != 0 and "cannot create home" in result.stderr


def test_unwritable_home_even_as_root(tmp_path: Path) -> None:
    result = run_cli("init", "--home", "/proc/carapace-home")
    assert result.returncode != 0 and "cannot create home" in result.stderr


def test_init_keeps_existing_groups(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    init_home(home)
    db = open_central(home.central_db)
    groups.create_agent_group(db, "Work", "work")
    db.close()
    report = init_home(home)
    assert report.created == ["folder groups/work"]
    assert (home.groups_dir / "work" / "CLAUDE.local.md").is_file()
    assert not init_home(home).changed
