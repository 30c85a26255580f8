"""What a runner imports to start and answer its first message (issue 19, runner start).

A real ``python -X importtime -m carapace.runner`` answers one chat message with the mock
provider and the workspace tools on; the modules it imported on the way are read from
``-X importtime``. The provider SDKs, the MCP client, web fetching and the standard
library modules that only some turns need are imported when such a turn comes, never at
start: each is tens of milliseconds to seconds (``anthropic`` alone is over 1 s here) or a
few milliseconds of every runner's cold start. No timing is asserted; what is checked is
which modules were loaded.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from carapace.runner.setup import private_tmp_dir
from carapace.testing.runner_proc import run_env, runner_cmd
from carapace.testing.sessions import make_agent_dir, make_session, read_outbound, write_chat

#: never imported by a runner that starts and answers a plain message (the SDKs and their
#: big dependencies, carapace's optional parts, and standard modules only some turns need)
NOT_AT_START = (
    "anthropic",
    "openai",
    "claude_agent_sdk",
    "httpx",
    "pydantic",
    "mcp",
    "PIL",
    "carapace.runner.providers.anthropic_provider",
    "carapace.runner.providers.openai_provider",
    "carapace.runner.providers.claude_sdk",
    "carapace.runner.mcp_client",
    "carapace.runner.webfetch",
    "carapace.host",
    "carapace.sandbox",
    "carapace.config",
    "carapace.packagenames",  # install_packages checks names with it when called
    "argparse",  # the host's command line is read without it (its help formatter: shutil)
    "shutil",
    "subprocess",  # commands and task scripts import it when they run
    "tempfile",
    "ctypes.util",  # find_library runs ldconfig
    "zoneinfo",  # a UTC group formats times without it
    "html",
    "base64",  # images
    "hashlib",  # OpenSSL: the ids use CPython's own SHA-256
    "ssl",  # OpenSSL too: only a provider's client (which its SDK loads anyway) takes it
    "dataclasses",  # ~0.8 ms per class and inspect/ast/dis: the runner's classes are records
    "inspect",
    "typing",  # ~6 ms: the runner's modules import its names for type checkers only
    "logging",  # ~5 ms with traceback, linecache, tokenize, textwrap: carapace.log writes
    "traceback",  # the runner's lines itself until something else loads logging
)


def imported_modules(stderr: str) -> set[str]:
    """The modules ``-X importtime`` lists until the runner starts to exit (its idle-exit
    line: what it imports to clean up is not part of its start)."""
    out = set()
    for line in stderr.splitlines():
        if "s: exiting" in line and "import time:" not in line:
            break
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                out.add(name)
    return out


def test_runner_start_and_first_turn_import_only_what_they_need(tmp_path: Path) -> None:
    paths = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"})
    write_chat(paths, "hello")
    cmd = runner_cmd(paths, agent_dir, "--idle-exit", "0.3")
    cmd[1:1] = ["-X", "importtime"]
    result = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    [reply] = read_outbound(paths)  # the first turn ran
    assert reply["content"]["text"].startswith("Mock reply")
    modules = imported_modules(result.stderr)
    assert {"carapace.runner.loop", "carapace.runner.providers.mock", "sqlite3"} <= modules
    loaded = sorted(
        m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in NOT_AT_START)
    )
    assert loaded == [], f"imported at start: {loaded}"


def test_imported_modules_reads_importtime_lines() -> None:
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       150 |        150 |   _io\n"
        "import time:      3362 |       3593 |     carapace.runner.inbound\n"
        "2026-12-05 INFO [runner x] runner ready | not an import line\n"
        "2026-12-05 INFO [runner carapace.runner.loop] idle for 0.3s: exiting\n"
        "import time:       900 |        900 |   shutil\n"
    )
    assert imported_modules(text) == {"_io", "carapace.runner.inbound"}


def test_private_tmp_dir_is_a_new_owner_only_folder_in_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))  # unusable: the next one
    monkeypatch.setenv("TEMP", str(tmp_path))
    first = private_tmp_dir("carapace-runner-s1-")
    second = private_tmp_dir("carapace-runner-s1-")
    assert first != second
    for made in (first, second):
        assert made.parent == tmp_path and made.name.startswith("carapace-runner-s1-")
        assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700


def test_an_unsandboxed_runner_removes_its_temp_folder_when_it_ends(tmp_path: Path) -> None:
    """The runner's own temp folder (its commands' ``TMPDIR``) was left in the host's
    ``/tmp`` after every unsandboxed runner, with whatever the agent's commands put there.
    It goes with the runner; a link planted in it is not followed."""
    paths = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"})
    write_chat(paths, "hello")
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "file").write_text("not the runner's")
    env = run_env()
    env["TMPDIR"] = str(tmp_root)
    proc = subprocess.Popen(runner_cmd(paths, agent_dir, "--idle-exit", "2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        [reply] = read_outbound_when(paths)
        assert reply["content"]["text"].startswith("Mock reply")
        [made] = list(tmp_root.iterdir())  # the runner's folder, while it runs
        (made / "scratch").write_text("agent output")
        (made / "d" / "e").mkdir(parents=True)
        (made / "d" / "e" / "f").write_text("deeper")
        (made / "d" / "to-file").symlink_to(outside / "file")
        (made / "link").symlink_to(outside)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_root.iterdir()) == []
    assert (outside / "file").read_text() == "not the runner's"


def read_outbound_when(paths: object, timeout: float = 30.0) -> list[dict[str, object]]:
    """The outbound rows once there is one (the runner answers, then idles)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = read_outbound(paths)  # type: ignore[arg-type]
        if rows:
            return rows
        time.sleep(0.02)
    raise AssertionError("no reply")
