"""Issue 12 item 2: an outbound row's id and file names are never used as host paths.

The hostile agent (mock script → bash inside bubblewrap) inserts into its own
``outbound.db`` a message to its own group whose id is a host folder and whose files name a
host file; before the fix the host's agent-to-agent copy read ``outbox / row["id"] / name``
— an absolute id replaces the outbox — and put the key into a session's inbox."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sec_helpers import (
    Recorder,
    bash_rule,
    forge_row_code,
    main_group,
    make_home,
    make_host,
    paths_of,
    python_cmd,
    reply_to,
    require_bwrap,
    sessions_of,
    system_notes,
    wait_for,
    write_script,
)

from carapace.jsonutil import dumps

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not-for-agents"


def _leaked(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                if not p.is_symlink() and SECRET in p.read_bytes():
                    found.append(p)
            except OSError:
                continue
    return found


@pytest.mark.parametrize("how", ["absolute-id", "dotdot-id", "dotdot-name", "linked-file"])
def test_forged_a2a_row_cannot_copy_a_host_file(tmp_path: Path, how: str) -> None:
    require_bwrap()
    victim = tmp_path / "victim" / ".ssh"
    victim.mkdir(parents=True)
    (victim / "id_rsa").write_bytes(SECRET)
    home = make_home(tmp_path)
    channel = Recorder()
    host = make_host(home, channel)

    async def attack() -> None:
        await host.start()
        try:
            assert await reply_to(host, channel, "hello")
            [s1] = sessions_of(host)
            p1 = paths_of(host, s1)
            g = main_group(host)
            rid, name, prep = str(victim), "id_rsa", ""
            if how == "dotdot-id":
                rid = os.path.relpath(victim, p1.outbox)
            elif how == "dotdot-name":
                rid, name = "r1", os.path.relpath(victim / "id_rsa", p1.outbox / "r1")
            elif how == "linked-file":
                rid = "r1"
                prep = (f"import os; os.makedirs({str(p1.outbox / 'r1')!r}, exist_ok=True); "
                        f"os.symlink({str(victim / 'id_rsa')!r}, "
                        f"{str(p1.outbox / 'r1' / 'id_rsa')!r})\n")  # fmt: skip
            row = {"id": rid, "timestamp": "2026-01-01T00:00:00.000Z", "kind": "chat",
                   "platform_id": g.id, "channel_type": "agent",
                   "content": dumps({"text": "for you", "files": [name]})}  # fmt: skip
            write_script(home, "main", [bash_rule("attack", python_cmd(
                prep + forge_row_code(p1.outbound, row)))])  # fmt: skip
            assert "forged" in await reply_to(host, channel, "attack now")
            note = await wait_for(
                lambda: [n for n in system_notes(p1) if "seq" in n] or _leaked(home.root),
                what="the host to handle the forged row",
            )
            await asyncio.sleep(0.2)  # let a copy that was about to happen happen
            assert _leaked(home.root) == [], "the host copied a host file for the agent"
            assert isinstance(note, list)
            assert any("not sent" in n or "could not be delivered" in n for n in note), note
        finally:
            await host.stop()
            host.close()

    asyncio.run(attack())
