"""Every message answered, to the person who sent it, once (issue 14): real host, real
runners, real ``carapace send`` processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from e2e_helpers import CARAPACE, E2E, rows, wait_for


def test_twenty_concurrent_senders_all_get_their_answer(e2e: E2E) -> None:
    # the runner is held in a turn (a question) while 20 senders write: their messages
    # queue up and are answered in batches (10 a turn), one reply per batch
    script = [
        {
            "match": "hold on",
            "tool_calls": [
                {
                    "name": "ask_user_question",
                    "arguments": {"title": "Hold", "question": "Go on?", "options": ["go"]},
                }
            ],
            "reply": "released",
        }
    ]
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(script))
    e2e.start_host()
    holder = ChatClient(e2e.home)
    try:
        holder.write({"id": "cli-hold", "text": "hold on", "senderId": "cli:holder"})
        wait_for(lambda: _cards(holder), timeout=60, what="the question")
        texts = [f"question number {i}" for i in range(20)]
        procs = [
            subprocess.Popen([*CARAPACE, "send", "--home", str(e2e.home), "--as", f"user{i}",
                              "--timeout", "60", "--json", t],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, t in enumerate(texts)
        ]  # fmt: skip
        [session] = e2e.sessions()
        wait_for(lambda: len(rows(session / "inbound.db", "SELECT 1 FROM messages_in WHERE "
                                  "content LIKE '%question number%'")) == 20,
                 timeout=120, what="20 messages routed")  # fmt: skip
        [question] = wait_for(lambda: e2e.ok("approvals", "list"), what="the question")
        e2e.ok("approvals", "approve", question["id"])
        results = [p.communicate(timeout=90) for p in procs]
    finally:
        holder.close()
    failed = [(t, p.returncode, err[-300:]) for t, p, (_, err) in zip(texts, procs, results, strict=True)
              if p.returncode != 0]  # fmt: skip
    assert failed == []
    replies = {}
    for t, (out, _) in zip(texts, results, strict=True):
        msgs = [json.loads(line) for line in out.splitlines() if line.strip()]
        replies[t] = [m["id"] for m in msgs if m.get("type") == "message"]
        assert replies[t], t
    assert len({i for ids in replies.values() for i in ids}) < 20  # batches did form
    assert e2e.stop_host() == 0


class ChatClient:
    """A raw ``cli.sock`` client in chat mode: every line the host sends, kept in order."""

    def __init__(self, home: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(home / "data" / "cli.sock"))
        self.sock.settimeout(0.2)
        self.buf = b""
        self.lines: list[dict[str, Any]] = []
        self.write({"type": "hello", "mode": "chat"})

    def write(self, obj: dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def poll(self) -> list[dict[str, Any]]:
        try:
            data = self.sock.recv(1 << 16)
        except (TimeoutError, BlockingIOError):
            data = b""
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.lines.append(json.loads(line))
        return self.lines

    def texts(self) -> list[str]:
        return [str(m.get("text")) for m in self.poll() if m.get("type") == "message"]

    def close(self) -> None:
        self.sock.close()


def _cards(client: ChatClient) -> list[dict[str, Any]]:
    return [
        m
        for m in client.poll()
        if m.get("type") == "message"
        and isinstance(m.get("content"), dict)
        and m["content"].get("type") == "ask_question"
    ]


def _runner_pid(session: Path, not_pid: int | None = None) -> int:
    def read() -> int | None:
        try:
            pid = int((session / ".runner.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid != not_pid else None

    return int(wait_for(read, timeout=60, what="a runner"))


def test_message_that_kills_its_runner_is_told_to_the_sender_and_tools_send_once(
    e2e: E2E,
) -> None:
    # the agent asks a question (a tool-sent message) and waits: the runner is killed
    # during that turn, the turn is retried, killed again, and the message gives up
    script = [{"match": "crash me", "tool_calls": [{"name": "ask_user_question", "arguments": {
        "title": "Pick", "question": "Which one?", "options": ["a", "b"]}}],
        "reply": "picked {tool_result}"}]  # fmt: skip
    (e2e.home / "groups" / "main" / "mock-script.json").write_text(json.dumps(script))
    e2e.write_settings("max_tries = 1\n")
    e2e.start_host()
    client = ChatClient(e2e.home)
    try:
        client.write({"id": "cli-crash", "text": "crash me", "senderId": "cli:local"})
        wait_for(lambda: any(m.get("type") == "ack" for m in client.poll()), what="ack")
        [session] = wait_for(e2e.sessions, what="session")
        pid = 0
        for _ in range(2):  # max_tries = 1: the first death is retried, the second fails it
            wait_for(lambda: _cards(client), timeout=60, what="the question card")
            pid = _runner_pid(session, pid)
            wait_for(lambda: rows(session / "outbound.db",
                                  "SELECT 1 FROM processing_ack WHERE status='processing'"),
                     timeout=60, what="the claim")  # fmt: skip
            os.kill(pid, signal.SIGKILL)
        told = wait_for(lambda: [t for t in client.texts() if "could not be answered" in t],
                        timeout=60, what="the failure told to the sender")  # fmt: skip
        assert "Send it again" in told[0]
        cards = _cards(client)
        assert len(cards) == 1, cards  # the retried turn did not ask again
        [(status,)] = rows(
            session / "inbound.db", "SELECT status FROM messages_in WHERE id LIKE 'cli-crash%'"
        )
        assert status == "failed"
    finally:
        client.close()
    assert e2e.stop_host() == 0


def _sql(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def test_a_message_the_session_cannot_store_yet_is_kept_and_goes_through_later(
    e2e: E2E,
) -> None:
    """The session's inbound.db fails with an OperationalError, as on a full disk. The
    message was acknowledged once durable in the host's ingest journal, so it is not lost:
    the sender hears once that it is kept, and it reaches the agent when the file can be
    written again (at the next try, or at once when the chat's next message comes)."""
    e2e.start_host()
    assert e2e.send("first").returncode == 0
    [session] = e2e.sessions()
    # (a RAISE() in a trigger would be a constraint error: a refusal for good)
    _sql(
        session / "inbound.db",
        "CREATE TRIGGER full BEFORE INSERT ON messages_in BEGIN SELECT disk_is_full(); END",
    )
    r = e2e.send("second", timeout=10)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no reply" in r.stderr
    assert "Your message is kept" in r.stdout and "disk_is_full" in r.stdout, r.stdout
    assert not rows(session / "inbound.db", "SELECT id FROM messages_in WHERE content LIKE "
                    "'%second%'")  # fmt: skip
    _sql(session / "inbound.db", "DROP TRIGGER full")
    r = e2e.send("third")
    assert r.returncode == 0 and '"third"' in r.stdout, r.stderr
    texts = [row[0] for row in rows(session / "inbound.db",
                                    "SELECT content FROM messages_in ORDER BY seq")]  # fmt: skip
    kept = [t for t in texts if '"text":"second"' in t or '"text":"third"' in t]
    assert len(kept) == 2 and '"second"' in kept[0] and '"third"' in kept[1], texts
    assert e2e.stop_host() == 0


def test_deleted_session_folder_answers_again_without_restart(e2e: E2E) -> None:
    e2e.start_host()
    assert e2e.send("before").returncode == 0
    [session] = e2e.sessions()
    for _ in range(50):  # the live runner and host may create files while it goes
        shutil.rmtree(session, ignore_errors=True)
        if not session.exists():
            break
    # the re-made folder is watched again (tests/test_watch_recreate.py), so the reply comes
    # on the runner's commit, not at the sweep's next check
    r = e2e.send("after", timeout=60)
    assert r.returncode == 0 and '"after"' in r.stdout, (r.stderr, e2e.host_log()[-2000:])
    assert e2e.stop_host() == 0
