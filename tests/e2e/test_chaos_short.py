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


def test_host_notices_without_a_row_id_are_not_counted_as_re_sent_rows() -> None:
    """The host's own notices (e.g. "your message is kept", one per session and failure)
    carry no outbound row id: several of them are not a reply row received twice. A row
    that does come twice (the same key) is."""
    from pathlib import Path

    tally = chaos.Tally()
    client = chaos.Client(Path("unused"), tally)
    for _ in range(3):
        client.handle({"type": "message", "id": None, "key": None, "text": "Your message is kept"})
    for _ in range(2):
        client.handle({"type": "message", "id": "out-1", "key": "k-1", "text": "hi"})
    rep = tally.report()
    assert rep["duplicate_rows"] == 1 and rep["duplicated"] == 1, rep


def test_the_logs_own_write_failures_are_counted_apart_from_the_hosts_tracebacks() -> None:
    log = "\n".join([
        "2026-12-06 03:40:39,931 ERROR carapace.channels.cli: not accepted: disk is full",
        "--- Logging error ---",
        "Traceback (most recent call last):",
        "OSError: [Errno 28] No space left on device",
        "",
        "Traceback (most recent call last):",
        "OSError: [Errno 28] No space left on device",
        "2026-12-06 03:40:41,000 ERROR carapace.host.sweep: sweep failed",
        "Traceback (most recent call last):",
        "RuntimeError: boom",
    ])  # fmt: skip
    assert chaos.count_tracebacks(log) == (1, 1)
