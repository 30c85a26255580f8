"""A conversation on Discord as a person has it: ``carapace channels add discord``, then a
real ``carapace run`` (discord.py inside) against the fake Discord, with real runners.

DM, a channel where the bot answers when mentioned, a thread (its own session), a file
(lands in the session's inbox), a stranger held for approval and the owner's card clicked
first by the wrong person then by the owner, an unknown channel's registration card, a
gateway drop mid-conversation, and a host killed while people go on talking."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_helpers import E2E, rows, wait_for

from carapace.testing.fake_discord import Channel, FakeDiscord


class ThreadedFake:
    """The fake Discord on its own event loop in a thread, driven from the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake: FakeDiscord = self.call(FakeDiscord().start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def sync(self, fn: Callable[[], Any]) -> Any:
        async def _run() -> Any:
            return fn()

        return self.call(_run())

    def close(self) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()  # (left to the collector, it closes its descriptors mid-test)


@pytest.fixture
def discord() -> Iterator[ThreadedFake]:
    t = ThreadedFake()
    try:
        yield t
    finally:
        t.close()


def _bot_texts(d: ThreadedFake, c: Channel) -> list[str]:
    return list(d.sync(lambda: [str(m["content"]) for m in d.fake.bot_messages(c)]))


def test_discord_conversation(e2e: E2E, discord: ThreadedFake) -> None:
    fake = discord.fake
    # --- set-up as a person does it: a wrong token is refused, the right one stored
    env = {**os.environ, "DISCORD_BOT_TOKEN": "not-the-token"}
    r = e2e.cli("channels", "add", "discord", "--home", str(e2e.home), "--base-url",
                fake.base_url, env=env)  # fmt: skip
    assert r.returncode == 1 and "401" in r.stderr and "\n" not in r.stderr.strip()
    assert not (e2e.home / "secrets.env").exists() or "DISCORD" not in (
        e2e.home / "secrets.env").read_text()  # fmt: skip
    env["DISCORD_BOT_TOKEN"] = fake.token
    r = e2e.cli("channels", "add", "discord", "--home", str(e2e.home), "--base-url",
                fake.base_url, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"DISCORD_BOT_TOKEN={fake.token}" in (e2e.home / "secrets.env").read_text()
    e2e.write_settings(f'\n[channels.discord]\nbase_url = "{fake.base_url}"\n')

    ann, bob = discord.sync(lambda: (fake.person("ann"), fake.person("bob")))
    dm = discord.sync(lambda: fake.dm(ann))
    general = discord.sync(lambda: fake.text_channel("home", "general"))
    gid = general.guild_id
    _wire(e2e, ann.id, f"discord:@me:{dm.id}", f"discord:{gid}:{general.id}")

    e2e.start_host()
    wait_for(lambda: fake.gateway.identifies == 1 and fake.gateway.connected.is_set(),
             what="the bot connected")  # fmt: skip

    # --- a DM: always for the bot
    discord.call(fake.user_says(dm, ann, "hello there"))
    wait_for(lambda: any('"hello there"' in t for t in _bot_texts(discord, dm)), 30, "DM reply")

    # --- a channel: nothing without a mention, an answer with one
    discord.call(fake.user_says(general, ann, "just chatting"))
    discord.call(fake.user_says(general, ann, "are you there?", mention=True))
    wait_for(lambda: any("are you there?" in t for t in _bot_texts(discord, general)), 30,
             "channel reply")  # fmt: skip
    assert not any("just chatting" in t for t in _bot_texts(discord, general))

    # --- a thread: its own session, the answer in the thread
    thread = discord.sync(lambda: fake.thread(general, "plans"))
    discord.call(fake.user_says(thread, ann, "thread question", mention=True))
    wait_for(lambda: any("thread question" in t for t in _bot_texts(discord, thread)), 30,
             "thread reply")  # fmt: skip
    threads = {t for (t,) in rows(e2e.central, "SELECT thread_id FROM sessions")}
    assert f"discord:{gid}:{general.id}:{thread.id}" in threads and None in threads

    # --- a file: downloaded into the session's inbox
    discord.call(fake.user_says(dm, ann, "see the notes", file=("notes.txt", b"milk, eggs")))
    wait_for(lambda: any("see the notes" in t for t in _bot_texts(discord, dm)), 30, "file reply")
    saved = list((e2e.home / "data" / "v2-sessions").glob("*/*/inbox/*/notes.txt"))
    assert [p.read_bytes() for p in saved] == [b"milk, eggs"]

    # --- a stranger: held; the owner's card in the DM; the wrong clicker changes nothing
    discord.call(fake.user_says(general, bob, "let me in", mention=True))
    card = wait_for(lambda: discord.sync(lambda: next(
        (m for m in fake.bot_messages(dm) if m["components"]), None)), 30, "approval card")  # fmt: skip
    assert "New sender" in card["content"] and "bob" in card["content"]
    discord.call(fake.click(card, 0, bob))
    wait_for(lambda: any("not" in t.lower() and "authori" in t.lower()
                         for t in _bot_texts(discord, dm)), 30, "refusal told")  # fmt: skip
    assert discord.sync(lambda: card["components"]) != []  # still pending, buttons kept
    assert not any("let me in" in t for t in _bot_texts(discord, general))
    discord.call(fake.click(card, 0, ann))
    wait_for(lambda: discord.sync(lambda: card["components"] == []), 30, "card decided")
    wait_for(lambda: any("let me in" in t for t in _bot_texts(discord, general)), 30,
             "held message answered")  # fmt: skip

    # --- the gateway drops mid-conversation: what was said meanwhile still arrives
    discord.call(fake.gateway.disconnect(4000))
    discord.call(fake.user_says(dm, ann, "said while you were away"))
    wait_for(lambda: any("said while you were away" in t for t in _bot_texts(discord, dm)), 30,
             "reply after resume")  # fmt: skip
    assert fake.gateway.resumes >= 1 and fake.gateway.identifies == 1

    # --- an unknown channel: the owner is asked whether to connect it
    random = discord.sync(lambda: fake.text_channel("home", "random"))
    discord.call(fake.user_says(random, bob, "hello bot?", mention=True))
    ask = wait_for(lambda: discord.sync(lambda: next(
        (m for m in fake.bot_messages(dm) if m["components"] and m is not card), None)), 30,
        "channel registration card")  # fmt: skip
    assert "channel" in ask["content"].lower()
    discord.call(fake.click(ask, len(ask["components"][-1]["components"]) - 1, ann))  # Reject
    wait_for(lambda: discord.sync(lambda: ask["components"] == []), 30, "registration decided")
    assert _bot_texts(discord, random) == []

    # --- the host is killed: what is said meanwhile is read back at its next start
    e2e.kill_host()
    discord.call(fake.user_says(dm, ann, "said while the host was down"))
    e2e.start_host()
    wait_for(lambda: any("said while the host was down" in t for t in _bot_texts(discord, dm)),
             30, "reply after the host restart")  # fmt: skip
    assert fake.gateway.identifies == 2
    assert all(len(t) <= 2000 for c in (dm, general, thread) for t in _bot_texts(discord, c))
    assert e2e.stop_host() == 0


def _wire(e2e: E2E, ann_id: str, dm_pid: str, general_pid: str) -> None:
    """The owner on Discord, their DM wired to the main agent, #general on mention with
    strangers held for approval (what a migrated NanoClaw home holds)."""
    from carapace.bootstrap import open_home
    from carapace.config import Home
    from carapace.db import groups, messaging, users

    conn, _ = open_home(Home(e2e.home))
    try:
        [main] = groups.list_agent_groups(conn)
        owner = f"discord:{ann_id}"
        users.upsert_user(conn, owner, "discord", "ann")
        users.grant_role(conn, owner, "owner")
        dm = messaging.create_messaging_group(conn, "discord", dm_pid, name="ann",
                                              unknown_sender_policy="strict")  # fmt: skip
        messaging.create_wiring(conn, dm.id, main.id, engage_mode="pattern", engage_pattern=".")
        ch = messaging.create_messaging_group(conn, "discord", general_pid, name="general",
                                              is_group=True,
                                              unknown_sender_policy="request_approval")  # fmt: skip
        messaging.create_wiring(conn, ch.id, main.id, engage_mode="mention")
    finally:
        conn.close()
    assert isinstance(conn, sqlite3.Connection)


def test_revoked_token_is_a_doctor_error_and_the_host_serves_the_rest(
    e2e: E2E, discord: ThreadedFake
) -> None:
    fake = discord.fake
    env = {**os.environ, "DISCORD_BOT_TOKEN": fake.token}
    r = e2e.cli("channels", "add", "discord", "--home", str(e2e.home), "--base-url",
                fake.base_url, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    e2e.write_settings(f'\n[channels.discord]\nbase_url = "{fake.base_url}"\n')
    e2e.start_host()
    wait_for(lambda: fake.gateway.connected.is_set(), what="the bot connected")
    assert e2e.cli("doctor", "--home", str(e2e.home)).returncode == 0

    def state() -> str:
        r = e2e.cli("channels", "list", "--home", str(e2e.home), "--json")
        return str({row["channel_type"]: row for row in json.loads(r.stdout)}["discord"]["state"])

    assert state() == "running"
    # revoked in Discord's portal while the host runs: the gateway closes with 4004
    discord.sync(lambda: setattr(fake, "token", "a-new-token"))
    discord.call(fake.gateway.disconnect(4004))
    wait_for(lambda: state() == "failed", 30, "discord recorded as failed")
    doc = e2e.cli("doctor", "--home", str(e2e.home), "--json")
    assert doc.returncode == 1
    [finding] = [f for f in json.loads(doc.stdout)["findings"] if f["code"] == "channel-failed"]
    assert "discord" in finding["subject"] and "revoked" in finding["message"]
    r = e2e.send("still there?")  # the CLI channel is served all the same
    assert r.returncode == 0 and '"still there?"' in r.stdout, (r.stdout, r.stderr)
    # a restart with the revoked token: refused at log-in, the rest starts
    e2e.stop_host()
    e2e.start_host()
    wait_for(lambda: state() == "failed", 30, "discord failed at start")
    assert e2e.send("and now?").returncode == 0
    assert e2e.stop_host() == 0
