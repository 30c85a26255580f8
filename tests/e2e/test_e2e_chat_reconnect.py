"""``carapace chat`` outlives a host restart (issue 14 item 7): it says it is reconnecting,
reconnects, and no message is lost and no reply printed twice."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time

from e2e_helpers import CARAPACE, E2E, rows


class ChatProc:
    def __init__(self, e2e: E2E) -> None:
        self.proc = subprocess.Popen(
            [*CARAPACE, "chat", "--home", str(e2e.home), "--timeout", "60",
             "--reconnect-grace", "120"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, words: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"chat never printed {words!r}; got {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if words in line:
                return line

    def finish(self) -> tuple[int, list[str], str]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(90)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        assert self.proc.stderr is not None
        return code, self.seen, self.proc.stderr.read()


def test_chat_reconnects_after_host_restarts_and_crashes(e2e: E2E) -> None:
    e2e.start_host()
    chat = ChatProc(e2e)
    chat.say("one")
    chat.expect('"one"')
    e2e.stop_host()  # a clean restart
    chat.expect("[host went away; reconnecting")
    chat.say("two")  # typed while the host is down: sent once it is back
    e2e.start_host()
    chat.expect("[reconnected to the running host]")
    chat.expect('"two"')
    e2e.kill_host(signal.SIGKILL)  # a crash
    chat.expect("[host went away; reconnecting")
    e2e.start_host()
    chat.expect("[reconnected")
    chat.say("three")
    chat.expect('"three"')
    code, out, err = chat.finish()
    assert code == 0, (out, err)
    replies = [line for line in out if line.startswith("agent> ")]
    for text in ("one", "two", "three"):
        assert sum(f'"{text}"' in r for r in replies) == 1, replies
    [d] = e2e.sessions()
    texts = [r[0] for r in rows(d / "inbound.db", "SELECT content FROM messages_in")]
    for text in ("one", "two", "three"):
        assert sum(f'"text":"{text}"' in t for t in texts) == 1, texts
    e2e.stop_host()


def test_chat_refuses_bad_lines_and_goes_on(e2e: E2E) -> None:
    """Not UTF-8, over 512 KiB (a 10 MB line used to vanish silently): one note each, the
    good lines are answered, the exit status says lines were refused."""
    e2e.start_host()
    stdin = b"first\n\xff\xfe broken\n" + b"y" * (10 * 1024 * 1024) + b"\nsecond\n"
    res = subprocess.run(
        [*CARAPACE, "chat", "--home", str(e2e.home), "--timeout", "60"],
        input=stdin, capture_output=True, timeout=120,
    )  # fmt: skip
    out = res.stdout.decode()
    err = [line for line in res.stderr.decode().splitlines() if line.strip()]
    assert res.returncode == 1 and err == [
        "Error: 2 line(s) were not sent (see the [not sent] notes)"
    ], (out, err)
    assert "[not sent: the line is not valid UTF-8]" in out
    assert (
        "[not sent: the message is 10,485,760 bytes; one message may carry at most 512 KiB]" in out
    )
    assert "agent> " in out  # one turn may answer both good lines (a batch)
    [d] = e2e.sessions()
    texts = [r[0] for r in rows(d / "inbound.db", "SELECT content FROM messages_in")]
    assert len(texts) == 2 and '"first"' in texts[0] and '"second"' in texts[1]
    e2e.stop_host()
