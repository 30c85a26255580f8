"""A short run of the chaos harness (``carapace bench chaos``): real host, real runners, SIGKILLs of
both, and a full disk when a tmpfs can be mounted. Nothing lost; duplicates at most one
per host kill."""

from __future__ import annotations

import json

import pytest

from carapace.bench import chaos


def test_short_chaos_run_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = chaos.main(["--n", "30", "--chats", "3", "--runner-kills", "6", "--host-kills",
                          "1", "--duration", "8", "--disk-full", "2", "--settle", "90",
                          "--seed", "14", "--json"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rep["lost"] == 0, rep
    assert rep["duplicated"] <= rep["host_kills"], rep
    assert rep["host_kills"] == 1 and rep["messages"] == 30
    assert code == 0


def test_a_home_given_by_hand_is_never_filled_by_the_disk_full_window(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--home`` the home is not on the harness's tmpfs, so the window must not write
    a filler next to it (as root that filled the machine's disk): no tmpfs is mounted and
    the window is the host's file-size limit."""
    from pathlib import Path

    def no_mount(path: Path) -> bool:
        raise AssertionError(f"tmpfs mounted at {path} for a home given by hand")

    monkeypatch.setattr(chaos, "try_mount_tmpfs", no_mount)
    root = Path(str(tmp_path))
    args = chaos.parse_args(["--disk-full", "5", "--home", str(root / "mine")])
    assert chaos.home_and_mount(args, root) == (root / "mine", False)
    monkeypatch.setattr(chaos, "try_mount_tmpfs", lambda path: True)
    args = chaos.parse_args(["--disk-full", "5"])
    assert chaos.home_and_mount(args, root) == (root / "fs" / "home", True)
