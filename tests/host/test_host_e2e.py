"""End to end with real processes: ``carapace run`` + ``carapace send`` + runner processes,
then SIGKILL of the runner and of the host mid-conversation (nothing lost, nothing twice)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CARAPACE = [sys.executable, "-m", "carapace"]


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def start_host(home: Path) -> subprocess.Popen[bytes]:
    sock = home / "data" / "cli.sock"
    if sock.exists():
        sock.unlink()
    with open(home.parent / "host.log", "ab") as log:
        proc = subprocess.Popen(
            [*CARAPACE, "run", "--home", str(home)], stdout=subprocess.DEVNULL, stderr=log
        )
    wait_for(lambda: sock.exists())
    return proc


def send(home: Path, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CARAPACE, "send", "--home", str(home), "--timeout", "20", text],
                          capture_output=True, text=True, timeout=40)  # fmt: skip


def session_dir(home: Path) -> Path:
    [d] = [p for p in (home / "data" / "v2-sessions").glob("*/*") if p.is_dir()]
    return d


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    subprocess.run([*CARAPACE, "init", "--home", str(h)], check=True, capture_output=True)
    yield h


def test_run_send_reply_and_rows(home: Path) -> None:
    host = start_host(home)
    try:
        r = send(home, "hello")
        assert r.returncode == 0, r.stderr
        assert "hello" in r.stdout
        d = session_dir(home)
        wait_for(
            lambda: rows(d / "inbound.db", "SELECT status FROM messages_in") == [("completed",)]
        )
        [(seq_in, trig)] = rows(d / "inbound.db", "SELECT seq, trigger FROM messages_in")
        assert seq_in % 2 == 0 and trig == 1
        outs = rows(d / "outbound.db", "SELECT id, seq FROM messages_out")
        assert outs and all(int(str(s)) % 2 == 1 for _, s in outs)
        assert rows(d / "outbound.db", "SELECT status FROM processing_ack") == [("completed",)]
        assert [s for (s,) in rows(d / "inbound.db", "SELECT status FROM delivered")] == [
            "delivered"
        ]
    finally:
        host.send_signal(signal.SIGTERM)
        assert host.wait(10) == 0
    assert not (home / "data" / "cli.sock").exists()


def test_send_without_host_and_timeout_message(home: Path) -> None:
    r = send(home, "embedded")
    assert r.returncode == 0 and "embedded" in r.stdout


def test_kill_runner_and_host_mid_conversation(home: Path) -> None:
    host = start_host(home)
    texts = [f"note {i}" for i in range(6)]
    try:
        assert texts[0] in send(home, texts[0]).stdout
        d = session_dir(home)
        pid = int((d / ".runner.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # the runner dies
        assert texts[1] in send(home, texts[1]).stdout
        assert texts[2] in send(home, texts[2]).stdout
        host.send_signal(signal.SIGKILL)  # the host dies; its runner follows (PDEATHSIG)
        host.wait(10)
        host = start_host(home)
        for t in texts[3:]:
            r = send(home, t)
            assert r.returncode == 0 and t in r.stdout, r.stderr
        wait_for(lambda: rows(d / "inbound.db",
                              "SELECT COUNT(*) FROM messages_in WHERE status!='completed'") == [(0,)])  # fmt: skip
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(10)
    answered = rows(d / "outbound.db", "SELECT in_reply_to, COUNT(*) FROM messages_out GROUP BY 1")
    assert len(answered) == len(texts) and all(n == 1 for _, n in answered)
    delivered = rows(d / "inbound.db", "SELECT status, COUNT(*) FROM delivered GROUP BY 1")
    assert delivered == [("delivered", len(texts))]
