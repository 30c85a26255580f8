"""Issue 12 item 11: the home is private to its user.

Before the fix everything was created 0755/0644, so any other OS user of the machine could
read ``v2.db`` (approval reply codes included), its WAL, the transcripts and the agents'
memory. Now the entry points set ``umask 0o077``, ``init`` tightens what it creates, and
``doctor`` flags anything wider with the ``chmod`` that fixes it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from sec_helpers import (
    Recorder,
    make_host,
    paths_of,
    reply_to,
    require_bwrap,
    sessions_of,
    write_script,
)

from carapace.config import Home
from carapace.perms import wide_entries


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carapace", *args], capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: os.umask(0o022))  # fmt: skip


def test_init_run_and_doctor_keep_the_home_private(tmp_path: Path) -> None:
    require_bwrap()
    root = tmp_path / "home"
    res = _cli("init", "--home", str(root))
    assert res.returncode == 0, res.stderr
    home = Home(root)
    for folder in (root, home.data_dir, home.groups_dir, home.group_dir("main")):
        assert _mode(folder) == 0o700, folder
    for f in (home.central_db, home.group_dir("main") / "CLAUDE.md"):
        assert _mode(f) == 0o600, f

    # a real host and a sandboxed runner that writes the agent's memory
    old = os.umask(0o022)
    try:
        channel = Recorder()
        host = make_host(home, channel)
        write_script(home, "main", [{"match": "remember", "tool_calls": [
            {"name": "write_file", "arguments": {"path": "CLAUDE.local.md",
                                                 "content": "- the user likes tea\n"}}],
            "reply": "noted"}])  # fmt: skip

        async def run() -> Path:
            await host.start()
            try:
                assert "noted" in await reply_to(host, channel, "remember: tea")
                [s] = sessions_of(host)
                assert _mode(Path(f"{home.central_db}-wal")) == 0o600  # while it exists
                return paths_of(host, s).root
            finally:
                await host.stop()
                host.close()

        session_dir = asyncio.run(run())
    finally:
        os.umask(old)
    memory = home.group_dir("main") / "CLAUDE.local.md"
    transcript = next((session_dir / "conversations").iterdir())
    for f in (memory, transcript, session_dir / "inbound.db", session_dir / "outbound.db"):
        assert _mode(f) == 0o600, f
    wide, _ = wide_entries(root)
    assert wide == [], [(str(p), oct(m)) for p, m in wide]

    res = _cli("doctor", "--home", str(root), "--json")
    assert not [f for f in json.loads(res.stdout)["findings"] if f["code"] == "wide-mode"]

    # doctor flags what an older version (or a careless chmod) left readable
    for f in (home.central_db, memory, transcript):
        f.chmod(0o644)
    session_dir.chmod(0o755)
    res = _cli("doctor", "--home", str(root), "--json")
    assert res.returncode != 0  # v2.db readable by others is an error
    found = {
        f["subject"]: f for f in json.loads(res.stdout)["findings"] if f["code"] == "wide-mode"
    }
    for f in (home.central_db, memory, transcript):
        assert found[str(f)]["message"].endswith(f"chmod 600 {f}"), found[str(f)]
    assert found[str(session_dir)]["message"].endswith(f"chmod 700 {session_dir}")
    assert found[str(home.central_db)]["level"] == "error"
