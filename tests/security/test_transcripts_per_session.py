"""Issue 12 item 10: one session's agent cannot read another session's conversation.

Two chats wired to the same agent group get two sessions, each with its own bubblewrap
runner. Before the fix both runners appended their transcripts to the group's shared
``conversations/`` folder — mounted read-write into every sandbox of the group — so the
second session's bash could grep the first session's conversation. Transcripts now live in
each session's own folder, which no other session's sandbox mounts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sec_helpers import (
    Recorder,
    bash_rule,
    event,
    main_group,
    make_home,
    make_host,
    paths_of,
    reply_to,
    require_bwrap,
    sessions_of,
    wait_for,
    write_script,
)

from carapace.db import messaging
from carapace.runner.transcript import adopt_legacy_transcript

SECRET = "XYZZY-4711"
PEEK = ("grep -r 'XYZZ[Y]-4711' \"$HOME\" /tmp /workspace 2>/dev/null; "
        "ls -R \"$HOME\" | head -50")  # fmt: skip


def test_second_session_cannot_read_the_first_sessions_transcript(tmp_path: Path) -> None:
    require_bwrap()
    home = make_home(tmp_path)
    channel = Recorder()
    host = make_host(home, channel)
    g = main_group(host)
    mg = messaging.create_messaging_group(host.db, "cli", "other", name="other",
                                          unknown_sender_policy="public")  # fmt: skip
    messaging.create_wiring(host.db, mg.id, g.id, engage_mode="pattern", engage_pattern=".")
    write_script(home, "main", [bash_rule("peek", PEEK, reply="seen: {tool_result}")])

    async def scenario() -> str:
        await host.start()
        try:
            assert SECRET in await reply_to(host, channel, f"my door code is {SECRET}")
            [first] = sessions_of(host)
            transcript = paths_of(host, first).transcripts / f"{first.id}.jsonl"
            await wait_for(lambda: transcript.exists() and SECRET in transcript.read_text(),
                           what="the first session's transcript")  # fmt: skip
            channel.to.clear()
            await host.route(event("peek please", platform_id="other"))
            [msg] = await wait_for(lambda: [m for p, m in channel.to if p == "other"],
                                   what="the second session's reply")  # fmt: skip
            assert len(sessions_of(host)) == 2
            content = msg.content if isinstance(msg.content, dict) else {}
            return str(content.get("text"))
        finally:
            await host.stop()
            host.close()

    seen = asyncio.run(scenario())
    assert seen.startswith("seen:")
    assert SECRET not in seen, "the second session read the first session's conversation"
    assert not (home.group_dir("main") / "conversations").exists()


def test_a_legacy_transcript_leaves_the_shared_folder(tmp_path: Path) -> None:
    group, session = tmp_path / "group", tmp_path / "session"
    (group / "conversations").mkdir(parents=True)
    session.mkdir()
    (group / "conversations" / "sess-1.jsonl").write_text('{"role":"user","content":"x"}\n')
    (group / "conversations" / "sess-2.jsonl").symlink_to("/etc/passwd")
    assert adopt_legacy_transcript(group, session, "sess-1")
    assert not (group / "conversations" / "sess-1.jsonl").exists()
    assert (session / "conversations" / "sess-1.jsonl").read_text().startswith('{"role"')
    assert not adopt_legacy_transcript(group, session, "sess-2")  # a link is never followed
    assert not (session / "conversations" / "sess-2.jsonl").exists()
