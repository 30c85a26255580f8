"""A NanoClaw v2 home, written by SQL in NanoClaw's format, used by a running carapace host.

The existing session (with an old-format inbound.db) receives a new message through the
router, a real runner process answers it, and the reply is delivered; nothing NanoClaw
wrote is rewritten.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from carapace.channels.fake import FakeChannel, make_event
from carapace.config import Home, Settings
from carapace.db.migrations import NANOCLAW_MIGRATION_NAMES
from carapace.host.host import Host, HostOptions
from carapace.sandbox.process import SubprocessBackend
from carapace.testing.v1fixtures import make_nanoclaw_v2_home


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def test_existing_session_answers_a_new_message(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nanoclaw")
    channel = FakeChannel("telegram")

    async def scenario() -> list[str]:
        host = Host(
            Home(v2.root), settings=Settings(runner_idle_exit_s=5), channels=[channel],
            backend=SubprocessBackend(),
            options=HostOptions(sockets=False, watch=True, cleanup_orphans=True),
        )  # fmt: skip
        await host.start()
        try:
            event = make_event(
                "are you still there?", channel_type="telegram", platform_id="telegram:42",
                sender="Me", sender_id="telegram:42", id="tg-100",
            )  # fmt: skip
            result = await host.route(event)
            assert result.routed, result
            deadline = asyncio.get_running_loop().time() + 30
            while not any("are you still there?" in t for t in channel.texts()):
                assert asyncio.get_running_loop().time() < deadline, channel.texts()
                await asyncio.sleep(0.05)
        finally:
            await host.stop()
            host.close()
        return channel.texts()

    texts = asyncio.run(scenario())
    assert any("are you still there?" in t for t in texts)
    assert channel.deliveries[-1].platform_id == "telegram:42"

    # The router used NanoClaw's session, not a new one.
    sessions = rows(v2.central_db, "SELECT id FROM sessions")
    assert sessions == [(v2.session_id,)]
    # Only carapace's own migrations were added to NanoClaw's ledger.
    names = [r[0] for r in rows(v2.central_db, "SELECT name FROM schema_version ORDER BY version")]
    assert names[: len(NANOCLAW_MIGRATION_NAMES)] == list(NANOCLAW_MIGRATION_NAMES)
    assert all(str(n).startswith("carapace-") for n in names[len(NANOCLAW_MIGRATION_NAMES) :])

    inbound = v2.session_dir / "inbound.db"
    ins = rows(inbound, "SELECT id, seq, content FROM messages_in ORDER BY seq")
    assert ins[0] == ("msg-1", 2, '{"text":"hi"}')  # NanoClaw's row is untouched
    new = [r for r in ins if r[0] == "tg-100:" + v2.agent_group_id]
    assert len(new) == 1 and isinstance(new[0][1], int) and new[0][1] % 2 == 0
    assert new[0][1] > 4
    outs = rows(v2.session_dir / "outbound.db", "SELECT id, seq, in_reply_to FROM messages_out")
    assert outs[0] == ("out-1", 3, "msg-1")
    replies = [o for o in outs if o[2] == new[0][0]]
    assert len(replies) == 1 and isinstance(replies[0][1], int) and replies[0][1] % 2 == 1
    acks = dict(
        rows(v2.session_dir / "outbound.db", "SELECT message_id, status FROM processing_ack")
    )
    assert acks[new[0][0]] == "completed"
