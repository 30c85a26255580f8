"""Telegram end to end: a real ``carapace run`` (host + runner processes, mock model) and the
real python-telegram-bot talking to the fake Bot API server on loopback, with a person on
the other side: a DM, a group with a mention, a forum topic, a file each way, an approval
card answered by button by the wrong and by the right person, a host SIGKILLed between
``getUpdates`` and the router's commit, and a NanoClaw v2 home with a Telegram chat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import CARAPACE, E2E, rows, wait_for

from carapace.testing.fake_telegram import FakeTelegram
from carapace.testing.v1fixtures import make_nanoclaw_v2_home

ANN, BOB = 1001, 1002
GROUP = -1009990001
CAREFUL = -1009990002
REPORT = b"quarterly numbers\n" * 50


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


def configure(e2e: E2E, tg: FakeTelegram) -> None:
    """What a person does: ``carapace channels add telegram`` (token from the env)."""
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": tg.token}
    r = e2e.cli("channels", "add", "telegram", "--home", str(e2e.home), "--base-url",
                tg.root_url, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"@{tg.username}" in r.stdout and tg.token not in r.stdout
    secrets = e2e.home / "secrets.env"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert f"TELEGRAM_BOT_TOKEN={tg.token}" in secrets.read_text()
    e2e.write_settings(f'\n[channels.telegram]\nbase_url = "{tg.root_url}"\npoll_timeout_s = 1\n')


def setup_chats(e2e: E2E) -> tuple[str, str]:
    dm = e2e.owner_dm("telegram", f"telegram:{ANN}", "Ann")
    grp = e2e.ok("messaging-groups", "create", "--channel-type", "telegram", "--platform-id",
                 f"telegram:{GROUP}", "--name", "Team", "--is-group",
                 "--unknown-sender-policy", "public")["id"]  # fmt: skip
    e2e.ok("wirings", "create", "--messaging-group-id", grp, "--agent-group-id", "main",
           "--engage-mode", "mention", "--session-mode", "per-thread")  # fmt: skip
    return dm, grp


def mock_script(e2e: E2E, rules: list[dict[str, Any]]) -> None:
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(rules))


def said(tg: FakeTelegram, chat: int, needle: str, thread: int | None = None) -> Any:
    return [m for m in tg.bot_messages(chat, thread) if needle in m.text]


def test_a_conversation_as_a_person_has_it(e2e: E2E, tg: FakeTelegram) -> None:
    configure(e2e, tg)
    setup_chats(e2e)
    careful = e2e.ok("messaging-groups", "create", "--channel-type", "telegram",
                     "--platform-id", f"telegram:{CAREFUL}", "--name", "Careful", "--is-group",
                     "--unknown-sender-policy", "request_approval")["id"]  # fmt: skip
    (e2e.home / "groups" / "main" / "report.txt").write_bytes(REPORT)
    mock_script(e2e, [
        {"match": "send me the report",
         "tool_calls": [{"name": "send_file", "arguments": {"path": "report.txt",
                                                            "text": "here it is"}}],
         "reply": "sent"},
        {"match": "install jq",
         "tool_calls": [{"name": "install_packages",
                         "arguments": {"apt": ["jq"], "reason": "parse JSON"}}],
         "reply": "asked for jq: {tool_result}"},
    ])  # fmt: skip
    e2e.start_host()
    ann, bob = tg.user(ANN, "Ann", "ann"), tg.user(BOB, "Bob", "bob")
    dm = tg.private_chat(ANN, "Ann")
    group = tg.group_chat(GROUP, "Team", forum=True)

    # a DM: every message engages; the mock quotes it back
    tg.user_message(dm, ann, "hello from telegram")
    wait_for(lambda: said(tg, ANN, "hello from telegram"), what="the DM reply")
    assert "typing" in [a[1] for a in tg.actions if a[0] == ANN]

    # a group: plain chatter does not engage the agent, a mention does
    tg.user_message(group, bob, "just chatting among ourselves")
    handle = f"@{tg.username}"
    tg.user_message(group, bob, f"{handle} what do you think?",
                    entities=[{"type": "mention", "offset": 0, "length": len(handle)}])  # fmt: skip
    wait_for(lambda: said(tg, GROUP, "what do you think?"), what="the group reply")
    assert not said(tg, GROUP, "just chatting")

    # a forum topic: the reply lands in the topic, in a session of its own
    tg.user_message(group, ann, f"{handle} in the topic", thread=7,
                    entities=[{"type": "mention", "offset": 0, "length": len(handle)}])  # fmt: skip
    wait_for(lambda: said(tg, GROUP, "in the topic", thread=7), what="the topic reply")
    assert not said(tg, GROUP, "in the topic")  # not in the General topic
    threads = {t for (t,) in rows(e2e.central, "SELECT thread_id FROM sessions")}
    assert "7" in threads

    # a file from the person lands in the session's inbox
    tg.user_message(dm, ann, "a file for you", document=("notes.txt", b"remember the milk"))
    wait_for(lambda: said(tg, ANN, "a file for you"), what="the reply to the file")
    inbox = [p for d in e2e.sessions() for p in d.glob("inbox/*/notes.txt")]
    assert len(inbox) == 1 and inbox[0].read_bytes() == b"remember the milk"

    # a file from the agent arrives as a document
    tg.user_message(dm, ann, "send me the report please")
    wait_for(lambda: [m for m in tg.bot_messages(ANN) if m.document], what="the document")
    [doc] = [m for m in tg.bot_messages(ANN) if m.document]
    assert doc.document == ("report.txt", REPORT)

    # an approval: the card goes to the owner's DM with buttons
    tg.user_message(dm, ann, "install jq for me")
    wait_for(lambda: [m for m in tg.bot_messages(ANN) if m.buttons], what="the approval card")
    [card] = [m for m in tg.bot_messages(ANN) if m.buttons]
    labels = [b["text"] for row in card.buttons for b in row]
    assert labels[:2] == ["Approve", "Reject"] and "jq" in card.text
    pending = e2e.ok("approvals", "list")
    assert len(pending) == 1
    # the wrong person (a forged click from Bob) is refused and changes nothing
    tg.press_button(ANN, card.message_id, 0, bob)
    wait_for(lambda: len(tg.answers) >= 1, what="bob's answer")
    assert "not" in str(tg.answers[0].get("text", "")).lower()
    assert e2e.ok("approvals", "list") == pending
    assert tg.messages[(ANN, card.message_id)].buttons  # the card is as it was
    # the owner approves: the card is edited to show the decision, without buttons
    tg.press_button(ANN, card.message_id, 0, ann)
    wait_for(lambda: not tg.messages[(ANN, card.message_id)].buttons, what="the card edited")
    assert "Approved" in tg.messages[(ANN, card.message_id)].text
    assert e2e.ok("approvals", "list") == []

    # an unknown chat: Bob writes to the bot; the registration card reaches the owner's
    # DM on Telegram, and her "connect" button wires the chat and answers Bob
    tg.user_message(tg.private_chat(BOB, "Bob"), bob, "hi, who are you?")
    wait_for(lambda: [m for m in tg.bot_messages(ANN) if m.buttons], what="the chat card")
    [reg] = [m for m in tg.bot_messages(ANN) if m.buttons]
    labels = [b["text"] for row in reg.buttons for b in row]
    assert any("main" in x or "Connect" in x for x in labels), labels
    assert not tg.bot_messages(BOB)  # nothing reaches Bob before the owner decides
    tg.press_button(ANN, reg.message_id, 0, ann)
    wait_for(lambda: said(tg, BOB, "who are you?"), timeout=30, what="Bob answered")
    assert not tg.messages[(ANN, reg.message_id)].buttons

    # an unknown sender in a chat that asks (Cid; Bob became a member when his chat was
    # connected): the owner allows Cid by button, his message is replayed and answered
    e2e.ok("wirings", "create", "--messaging-group-id", careful, "--agent-group-id", "main",
           "--engage-mode", "pattern", "--engage-pattern", ".")  # fmt: skip
    tg.user_message(tg.group_chat(CAREFUL, "Careful"), tg.user(1003, "Cid"), "may I join in?")
    wait_for(lambda: len([m for m in tg.bot_messages(ANN) if m.buttons]) == 1,
             what="the sender card")  # fmt: skip
    [who] = [m for m in tg.bot_messages(ANN) if m.buttons]
    assert "sender" in who.text.lower() or "Cid" in who.text
    assert not tg.bot_messages(CAREFUL)
    tg.press_button(ANN, who.message_id, 0, ann)
    wait_for(lambda: said(tg, CAREFUL, "may I join in?"), timeout=30, what="Cid answered")
    assert e2e.stop_host() == 0
    # the token is in secrets.env only: not in a DB, a session, a log or the host's output
    secret = tg.token.encode()
    leaks = [p for p in (*e2e.home.rglob("*"), e2e.log)
             if p.is_file() and p.name != "secrets.env" and secret in p.read_bytes()]  # fmt: skip
    assert leaks == []


def test_host_killed_between_getupdates_and_commit_loses_nothing(
    e2e: E2E, tg: FakeTelegram
) -> None:
    configure(e2e, tg)
    setup_chats(e2e)
    host = e2e.start_host()
    ann, dm = tg.user(ANN, "Ann", "ann"), tg.private_chat(ANN, "Ann")
    tg.user_message(dm, ann, "warm up")
    wait_for(lambda: said(tg, ANN, "warm up"), what="the first reply")
    killed: list[int] = []

    def kill_on_return(updates: list[dict[str, Any]]) -> None:  # in the server's thread
        if any("do not lose me" in json.dumps(u) for u in updates) and not killed:
            os.kill(host.pid, signal.SIGKILL)
            killed.append(host.pid)

    tg.on_updates_returned = kill_on_return
    tg.user_message(dm, ann, "do not lose me")
    uid = tg.updates[-1]["update_id"]
    wait_for(lambda: killed, what="the kill")
    host.wait(15)
    e2e.host = None
    tg.on_updates_returned = None
    e2e.start_host()
    wait_for(lambda: said(tg, ANN, "do not lose me"), timeout=30, what="the reply after restart")
    [d] = [d for d in e2e.sessions() if rows(d / "inbound.db", "SELECT 1 FROM messages_in")]
    texts = [c for (c,) in rows(d / "inbound.db", "SELECT content FROM messages_in")]
    assert sum("do not lose me" in t for t in texts) == 1  # routed once
    assert tg.returned.count(uid) >= 2  # read again after the kill: it was not confirmed
    assert e2e.stop_host() == 0
    assert len(said(tg, ANN, "do not lose me")) == 1  # answered once


def test_a_nanoclaw_v2_home_with_a_telegram_chat_answers_there(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nc")
    e2e = E2E(tmp_path)
    e2e.home = v2.root
    e2e.write_settings('runner_backend = "subprocess"\n')
    configure(e2e, tg)
    try:
        e2e.start_host()
        tg.user_message(tg.private_chat(42, "Me"), tg.user(42, "Me"), "are you there?")
        wait_for(lambda: said(tg, 42, "are you there?"), timeout=30, what="the reply")
        r = subprocess.run([*CARAPACE, "channels", "list", "--home", str(v2.root), "--json"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        states = {c["channel_type"]: c for c in json.loads(r.stdout)}
        assert states["telegram"]["configured"] and states["telegram"]["state"] == "running"
        assert e2e.stop_host() == 0
    finally:
        if e2e.host is not None:
            e2e.host.kill()
            e2e.host.wait(5)


def test_a_nanoclaw_v1_import_with_telegram_chats_answers_there(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    from carapace.testing.v1fixtures import add_group, make_v1_tree

    tree = make_v1_tree(tmp_path / "v1")
    c = tree.db()
    add_group(c, "tg:42", "Me", "main", requires_trigger=0, is_main=1)
    c.close()
    e2e = E2E(tmp_path)
    r = e2e.cli("migrate-v1", "--home", str(e2e.home), str(tree.root))
    assert r.returncode == 0, r.stdout + r.stderr
    e2e.write_settings('runner_backend = "subprocess"\n')
    configure(e2e, tg)
    try:
        e2e.start_host()
        tg.user_message(tg.private_chat(42, "Me"), tg.user(42, "Me"), "still you?")
        wait_for(lambda: said(tg, 42, "still you?"), timeout=30, what="the reply")
        assert e2e.stop_host() == 0
    finally:
        if e2e.host is not None:
            e2e.host.kill()
            e2e.host.wait(5)
