"""Issue 4 end to end: ``carapace run`` + ``send``/``chat`` on a fresh home, the session DB
rows, and SIGKILLs of runner and host at awkward moments (every message answered once)."""

from __future__ import annotations

import os
import signal
import subprocess

from e2e_helpers import CARAPACE, E2E, rows, wait_for


def _answered_once(e2e: E2E, texts: list[str]) -> None:
    """Each message processed once (one ack, completed) and no reply twice; messages that
    waited together may share one reply (a batch). A reply produced after its client left
    waits for the next client of the chat (by design): a last ``send`` collects it."""
    [d] = e2e.sessions()

    def settled() -> bool:
        n = rows(d / "inbound.db", "SELECT COUNT(*) FROM messages_in")[0][0]
        done = rows(d / "outbound.db", "SELECT COUNT(*) FROM processing_ack "
                    "WHERE status='completed'")[0][0]  # fmt: skip
        return bool(n == done)

    wait_for(settled, what="every message completed")
    r = e2e.send("flush")
    assert r.returncode == 0 and '"flush"' in r.stdout, r.stderr
    wait_for(settled, what="every message completed")
    ins = dict(rows(d / "inbound.db", "SELECT id, content FROM messages_in"))
    for t in texts:
        assert sum(f'"{t}"' in c for c in ins.values()) == 1, t  # routed once
    acks = dict(rows(d / "outbound.db", "SELECT message_id, status FROM processing_ack"))
    assert acks == {mid: "completed" for mid in ins}
    replies = rows(d / "outbound.db", "SELECT in_reply_to, COUNT(*) FROM messages_out GROUP BY 1")
    assert all(n == 1 and mid in ins for mid, n in replies), replies
    wait_for(lambda: rows(d / "inbound.db", "SELECT status, COUNT(*) FROM delivered GROUP BY 1")
             == [("delivered", len(replies))], what="every reply delivered once")  # fmt: skip


def test_send_reply_and_session_rows(e2e: E2E) -> None:
    e2e.start_host()
    r = e2e.send("hello")
    assert r.returncode == 0, r.stderr
    assert '"hello"' in r.stdout and "[earlier]" not in r.stdout
    [d] = e2e.sessions()
    wait_for(lambda: rows(d / "outbound.db", "SELECT status FROM processing_ack") == [
        ("completed",)], what="ack completed")  # fmt: skip
    # the host copies terminal acks into messages_in in batches, within ACK_FLUSH_S (issue 19)
    wait_for(lambda: rows(d / "inbound.db", "SELECT status FROM messages_in") == [
        ("completed",)], what="status synced")  # fmt: skip
    [(seq_in, status, trigger)] = rows(d / "inbound.db",
                                       "SELECT seq, status, trigger FROM messages_in")  # fmt: skip
    assert seq_in % 2 == 0 and status == "completed" and trigger == 1
    outs = rows(d / "outbound.db", "SELECT seq FROM messages_out")
    assert outs and all(s % 2 == 1 for (s,) in outs)
    assert [s for (s,) in rows(d / "inbound.db", "SELECT status FROM delivered")] == ["delivered"]
    assert e2e.stop_host() == 0
    assert not (e2e.home / "data" / "cli.sock").exists()


def test_chat_reads_stdin_until_eof_and_prints_every_reply(e2e: E2E) -> None:
    e2e.start_host()
    r = e2e.cli("chat", "--timeout", "20", stdin="first line\n\nsecond line\n")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("agent> ")]
    assert len(lines) >= 1 and '"second line"' in r.stdout, r.stdout
    [d] = e2e.sessions()
    texts = [c for (c,) in rows(d / "inbound.db", "SELECT content FROM messages_in")]
    assert len(texts) == 2  # the empty line is no message
    assert e2e.stop_host() == 0


def test_an_undelivered_reply_never_blocks_the_next_client(e2e: E2E) -> None:
    """A chat client that leaves before its reply: the reply waits, and the next client
    of the chat gets it at once (before its own), instead of everything after it waiting."""
    e2e.start_host()
    r = e2e.cli("chat", "--timeout", "0", stdin="left early\n")
    assert r.returncode in (0, 1)
    [d] = e2e.sessions()
    wait_for(lambda: (rows(d / "outbound.db", "SELECT COUNT(*) FROM messages_out") == [(1,)]
             and rows(d / "inbound.db", "SELECT COUNT(*) FROM delivered") == [(0,)])
             or "left early" in r.stdout, what="a waiting reply")  # fmt: skip
    r2 = e2e.send("next one", timeout=10)
    assert r2.returncode == 0, r2.stderr
    assert '"next one"' in r2.stdout
    if "left early" not in r.stdout:
        assert "[earlier] " in r2.stdout and '"left early"' in r2.stdout
    assert e2e.stop_host() == 0


def test_kills_at_random_points_answer_every_message_once(e2e: E2E) -> None:
    e2e.start_host()
    texts = [f"note {i}" for i in range(7)]
    assert texts[0] in e2e.send(texts[0]).stdout
    [d] = e2e.sessions()
    pid = int((d / ".runner.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # the runner dies between messages
    assert texts[1] in e2e.send(texts[1]).stdout
    # the runner dies while it works on a message
    sender = e2e.cli("send", "--timeout", "20", texts[2], timeout=40)
    assert texts[2] in sender.stdout
    pid = int(wait_for(lambda: (d / ".runner.pid").exists() and (d / ".runner.pid").read_text(),
                       what="runner pid").split()[0])  # fmt: skip
    os.kill(pid, signal.SIGKILL)
    assert texts[3] in e2e.send(texts[3]).stdout
    e2e.kill_host()  # the host dies; its runner follows
    e2e.start_host()
    assert texts[4] in e2e.send(texts[4]).stdout
    # the host dies right after routing a message, maybe before the reply is delivered
    proc = subprocess.Popen([*CARAPACE, "send", "--home", str(e2e.home), "--timeout", "5",
                             texts[5]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    wait_for(lambda: any(texts[5] in c for (c,) in rows(d / "inbound.db",
                                                        "SELECT content FROM messages_in")),
             what="message routed")  # fmt: skip
    e2e.kill_host()
    out5, _ = proc.communicate(timeout=30)
    e2e.start_host()
    r = e2e.send(texts[6])
    assert r.returncode == 0 and texts[6] in r.stdout, r.stderr
    assert "Error" not in out5  # answered before the kill, or later to the next client
    _answered_once(e2e, texts)
    assert e2e.stop_host() == 0
