"""A command that cannot write for want of space says so, and what to do, in one line
(issue 14: a host that cannot start on a full disk printed "internal error")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CARAPACE = [sys.executable, "-m", "carapace"]

# a private mount namespace (a user namespace too, so this runs as a normal user): a 1 MiB
# tmpfs, filled to the last byte, then the command
FULL_DISK = (
    'mount -t tmpfs -o size=1m tmpfs "$0" && '
    'mkdir "$0/home" && (cat /dev/zero > "$0/fill" 2>/dev/null; true) && exec "$@"'
)


def _on_full_disk(mnt: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for this test")
    mnt.mkdir()
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           FULL_DISK, str(mnt), *argv],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("verb", ["run", "init"])
def test_a_full_disk_is_said_with_what_to_do(tmp_path: Path, verb: str) -> None:
    mnt = tmp_path / "mnt"
    r = _on_full_disk(mnt, *CARAPACE, verb, "--home", str(mnt / "home"))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert lines[-1].startswith("Error: the disk is full ("), r.stderr
    assert lines[-1].endswith("free space on the file system holding the home, then run the "
                              "command again [disk-full]")  # fmt: skip
