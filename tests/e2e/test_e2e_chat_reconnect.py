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
