"""The Discord adapter inside a host (fake runner, single passes): a reply Discord refuses
is a permanent failure the agent is told about, and typing reaches the chat."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from carapace.channels.discord_adapter import DiscordChannel
from carapace.config import Home, Settings
from carapace.db import groups, messaging
from carapace.db.session import insert_message_out, open_inbound, open_outbound
from carapace.db.sessions import list_sessions
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.jsonutil import dumps
from carapace.testing.fake_discord import FakeDiscord
from carapace.timefmt import sqlite_ts


def _reply(paths: object, rid: str, pid: str, content: dict[str, object], now: str) -> None:
    out = open_outbound(paths)  # type: ignore[arg-type]
    try:
        insert_message_out(out, {
            "id": rid, "kind": "chat", "timestamp": now, "channel_type": "discord",
            "platform_id": pid, "thread_id": None, "in_reply_to": None, "content": dumps(content),
        })  # fmt: skip
    finally:
        out.close()


def test_agent_edits_and_reactions_reach_discord_by_the_ids_it_sees(tmp_path: Path) -> None:
    """The agent names messages as it sees them: an inbound row id is
    ``<discord message id>:<agent group>``, its own reply the platform id the host stored."""

    async def scenario() -> None:
        fake = await FakeDiscord().start()
        adapter = DiscordChannel(fake.token, base_url=fake.base_url, guild_ready_timeout=0.05)
        host = Host(Home(tmp_path / "home"), settings=Settings(runner_idle_exit_s=0),
                    channels=[adapter], backend=FakeBackend(),
                    options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
        await host.start(background=False)
        try:
            await asyncio.wait_for(adapter.ready.wait(), 20)
            ann = fake.person("ann")
            dm = fake.dm(ann)
            pid = f"discord:@me:{dm.id}"
            ag = groups.create_agent_group(host.db, "main", "main")
            mg = messaging.create_messaging_group(host.db, "discord", pid, name="ann",
                                                  unknown_sender_policy="public")  # fmt: skip
            messaging.create_wiring(host.db, mg.id, ag.id, engage_mode="pattern",
                                    engage_pattern=".")  # fmt: skip
            said = await fake.user_says(dm, ann, "thumbs up this please")
            while not any(host.sessions.ready(s) for s in list_sessions(host.db)):
                await asyncio.sleep(0.01)
            [session] = list_sessions(host.db)
            paths = host.sessions.paths(session)
            now = sqlite_ts(host.now())
            _reply(paths, "r-1", pid, {"text": "first words"}, now)
            await host.deliver_once(session.id)
            [mine] = fake.bot_messages(dm)
            _reply(paths, "r-2", pid, {"operation": "reaction", "emoji": "thumbsup",
                                       "messageId": f"{said['id']}:{ag.id}"}, now)  # fmt: skip
            _reply(paths, "r-3", pid, {"operation": "edit", "messageId": mine["id"],
                                       "text": "better words"}, now)  # fmt: skip
            await host.deliver_once(session.id)
            assert fake.reactions == [(dm.id, said["id"], "👍")]
            assert mine["content"] == "better words" and mine["edited_timestamp"]
        finally:
            await host.stop()
            host.close()
            await fake.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_refused_reply_is_told_to_the_agent(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = await FakeDiscord().start()
        adapter = DiscordChannel(fake.token, base_url=fake.base_url, guild_ready_timeout=0.05)
        host = Host(Home(tmp_path / "home"), settings=Settings(runner_idle_exit_s=0),
                    channels=[adapter], backend=FakeBackend(),
                    options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
        await host.start(background=False)
        try:
            await asyncio.wait_for(adapter.ready.wait(), 20)
            general = fake.text_channel("home", "general")
            pid = f"discord:{general.guild_id}:{general.id}"
            ag = groups.create_agent_group(host.db, "main", "main")
            mg = messaging.create_messaging_group(host.db, "discord", pid, name="general",
                                                  is_group=True, unknown_sender_policy="public")  # fmt: skip
            messaging.create_wiring(host.db, mg.id, ag.id, engage_mode="mention")
            await fake.user_says(general, fake.person("ann"), "help me", mention=True)

            def routed() -> bool:  # the row, and the folder made after it
                return any(host.sessions.ready(s) for s in list_sessions(host.db))

            while not routed():
                await asyncio.sleep(0.01)
            [session] = list_sessions(host.db)
            paths = host.sessions.paths(session)
            fake.make_unreachable(general)  # the bot was removed from the channel
            out = open_outbound(paths)
            try:
                insert_message_out(out, {
                    "id": "reply-1", "kind": "chat", "timestamp": sqlite_ts(host.now()),
                    "channel_type": "discord", "platform_id": pid, "thread_id": None,
                    "in_reply_to": None, "content": dumps({"text": "here you go"}),
                })  # fmt: skip
            finally:
                out.close()
            await host.deliver_once(session.id)
            inb = open_inbound(paths)
            try:
                notes = [json.loads(c)["text"] for (c,) in inb.execute(
                    "SELECT content FROM messages_in WHERE content LIKE '%could not be delivered%'")]  # fmt: skip
                [(status,)] = inb.execute(
                    "SELECT status FROM delivered WHERE message_out_id='reply-1'"
                )
            finally:
                inb.close()
            assert status == "failed"
            assert len(notes) == 1 and "403" in notes[0] and "Missing Access" in notes[0]
            assert fake.bot_messages(general) == []
        finally:
            await host.stop()
            host.close()
            await fake.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_nanoclaw_home_with_discord_chats_works_unchanged(tmp_path: Path) -> None:
    """A NanoClaw v2 home whose chats are Discord's (ids as NanoClaw's bridge wrote them): a
    DM and a thread reach the sessions NanoClaw made for them."""
    import sqlite3

    from carapace.testing.v1fixtures import make_nanoclaw_v2_home

    async def scenario() -> None:
        fake = await FakeDiscord().start()
        ann = fake.person("ann")
        dm, general = fake.dm(ann), fake.text_channel("home", "general")
        thread = fake.thread(general, "plans")
        g = general.guild_id
        v2 = make_nanoclaw_v2_home(tmp_path / "nc")
        ag, t = v2.agent_group_id, "2026-01-10T08:00:00.000Z"
        tid = f"discord:{g}:{general.id}:{thread.id}"
        conn = sqlite3.connect(str(v2.central_db), isolation_level=None)
        conn.execute("UPDATE messaging_groups SET channel_type='discord', platform_id=? "
                     "WHERE id=?", (f"discord:@me:{dm.id}", v2.messaging_group_id))  # fmt: skip
        conn.execute("INSERT INTO users VALUES (?, 'discord', 'ann', ?)", (f"discord:{ann.id}", t))
        conn.execute("INSERT INTO user_roles VALUES (?, 'owner', NULL, NULL, ?)",
                     (f"discord:{ann.id}", t))  # fmt: skip
        conn.execute("INSERT INTO messaging_groups VALUES ('mg-2', 'discord', ?, 'general', 1, "
                     "'strict', ?, NULL)", (f"discord:{g}:{general.id}", t))  # fmt: skip
        conn.execute("INSERT INTO messaging_group_agents VALUES ('mga-2', 'mg-2', ?, 'shared', 0, "
                     "?, 'mention', NULL, 'all', 'drop')", (ag, t))  # fmt: skip
        conn.execute("INSERT INTO sessions VALUES ('sess-thread', ?, 'mg-2', ?, NULL, 'active', "
                     "'stopped', ?, ?)", (ag, tid, t, t))  # fmt: skip
        conn.close()
        adapter = DiscordChannel(fake.token, base_url=fake.base_url, guild_ready_timeout=0.05)
        host = Host(Home(v2.root), settings=Settings(runner_idle_exit_s=0), channels=[adapter],
                    backend=FakeBackend(),
                    options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
        await host.start(background=False)
        try:
            await asyncio.wait_for(adapter.ready.wait(), 20)
            said = await fake.user_says(dm, ann, "hello again")
            in_thread = await fake.user_says(thread, ann, "about the plans", mention=True)

            def rows(session_id: str) -> list[str]:
                [s] = [s for s in list_sessions(host.db) if s.id == session_id]
                if not host.sessions.paths(s).inbound.exists():  # NanoClaw made no folder yet
                    return []
                inb = open_inbound(host.sessions.paths(s))
                try:
                    return [r[0] for r in inb.execute("SELECT id FROM messages_in")]
                finally:
                    inb.close()

            while f"{in_thread['id']}:{ag}" not in rows("sess-thread"):
                await asyncio.sleep(0.01)
            assert f"{said['id']}:{ag}" in rows(v2.session_id)
            assert {s.id for s in list_sessions(host.db)} == {v2.session_id, "sess-thread"}
        finally:
            await host.stop()
            host.close()
            await fake.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_agents_question_cannot_wear_a_pending_approvals_id(tmp_path: Path) -> None:
    """Attack: the agent posts an innocent-looking question ("Tea or coffee?") whose
    ``questionId`` is the id of its own pending approval. A click on its first button would
    be read against the approval's options ("Approve"). The host refuses such a question."""
    from carapace.db import approvals as dba
    from carapace.db import users
    from carapace.permissions import cards
    from carapace.permissions.approvals import request_approval
    from carapace.permissions.approvals_host import HostContext

    async def scenario() -> None:
        fake = await FakeDiscord().start()
        adapter = DiscordChannel(fake.token, base_url=fake.base_url, guild_ready_timeout=0.05)
        host = Host(Home(tmp_path / "home"), settings=Settings(runner_idle_exit_s=0),
                    channels=[adapter], backend=FakeBackend(),
                    options=HostOptions(sockets=False, watch=False, cleanup_orphans=False))  # fmt: skip
        await host.start(background=False)
        try:
            await asyncio.wait_for(adapter.ready.wait(), 20)
            ann = fake.person("ann")
            dm = fake.dm(ann)
            pid = f"discord:@me:{dm.id}"
            users.upsert_user(host.db, f"discord:{ann.id}", "discord", "ann")
            users.grant_role(host.db, f"discord:{ann.id}", "owner")
            ag = groups.create_agent_group(host.db, "main", "main")
            mg = messaging.create_messaging_group(host.db, "discord", pid, name="ann")
            messaging.create_wiring(host.db, mg.id, ag.id, engage_mode="pattern",
                                    engage_pattern=".")  # fmt: skip
            await fake.user_says(dm, ann, "hi")
            while not any(host.sessions.ready(s) for s in list_sessions(host.db)):
                await asyncio.sleep(0.01)
            [session] = list_sessions(host.db)
            aid = request_approval(HostContext(host), session.id, "install_packages",
                                   {"apt": ["curl"], "npm": []}, "Install packages", "curl")  # fmt: skip
            assert aid is not None
            _reply(host.sessions.paths(session), "q-1", pid, {
                "type": "ask_question", "questionId": aid, "title": "Quick poll",
                "question": "Tea or coffee?", "options": ["Tea", "Coffee"],
            }, sqlite_ts(host.now()))  # fmt: skip
            await host.deliver_once(session.id)
            posted = [m for m in fake.bot_messages(dm) if m["components"]]
            for m in posted:  # were it shown, the owner answers the poll
                await fake.click(m, 0, ann)
                await fake.wait_for(lambda: len(fake.interaction_responses) == len(posted))
                await asyncio.sleep(0)
            card = cards.get_card(host.db, aid)
            assert card is not None and (card.status, card.decision) == ("pending", None)
            assert dba.get_approval(host.db, aid) is not None
            assert posted == []
            inb = open_inbound(host.sessions.paths(session))
            try:
                [(status,)] = inb.execute("SELECT status FROM delivered WHERE message_out_id='q-1'")
            finally:
                inb.close()
            assert status == "failed"
        finally:
            await host.stop()
            host.close()
            await fake.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
