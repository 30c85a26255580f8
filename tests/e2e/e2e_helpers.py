"""End-to-end helpers: a fresh home, real ``carapace`` processes, deadline polling.

Every test drives the real command line (``carapace init/run/send/chat/admin``) as
subprocesses on a temp home; conditions are polled with a deadline, never slept for.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CARAPACE = [sys.executable, "-m", "carapace"]


def wait_for(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
        time.sleep(0.02)


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class E2E:
    """One temp home and the processes started on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.host: subprocess.Popen[bytes] | None = None
        self.log = root / "host.log"

    # -- processes ----------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 30, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        argv = [*CARAPACE, *args]
        if args and args[0] in ("init", "run", "send", "chat"):
            argv = [*CARAPACE, args[0], "--home", str(self.home), *args[1:]]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=env)  # fmt: skip

    def admin(self, *words: str, json_out: bool = True) -> tuple[int, Any, str]:
        """``carapace admin``: (exit code, parsed --json output, stderr)."""
        flags = ["--json"] if json_out else []
        r = self.cli("admin", "--home", str(self.home), *flags, *words)
        data: Any = r.stdout
        if json_out and r.stdout.strip():
            data = json.loads(r.stdout)
        return r.returncode, data, r.stderr

    def ok(self, *words: str) -> Any:
        code, data, err = self.admin(*words)
        assert code == 0, (words, data, err)
        return data

    def send(self, text: str, *extra: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return self.cli("send", "--timeout", str(timeout), *extra, text, timeout=timeout + 20)

    def start_host(self) -> subprocess.Popen[bytes]:
        sock = self.home / "data" / "cli.sock"
        for stale in (sock, self.home / "data" / "ncl.sock"):  # left by a SIGKILLed host
            stale.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.host = subprocess.Popen(
                [*CARAPACE, "run", "--home", str(self.home)], stdout=subprocess.DEVNULL, stderr=log
            )
        wait_for(lambda: sock.exists() and (self.home / "data" / "ncl.sock").exists(),
                 what="host sockets")  # fmt: skip
        return self.host

    def kill_host(self, sig: int = signal.SIGKILL) -> None:
        assert self.host is not None
        self.host.send_signal(sig)
        self.host.wait(15)
        self.host = None

    def stop_host(self) -> int:
        if self.host is None:
            return 0
        self.host.send_signal(signal.SIGTERM)
        try:
            code = self.host.wait(15)
        except subprocess.TimeoutExpired:
            self.host.kill()
            self.host.wait(5)
            raise AssertionError(f"the host did not stop on SIGTERM; log:\n{self.host_log()}")
        self.host = None
        assert code == 0, f"host exit code {code}; log:\n{self.host_log()[-3000:]}"
        return code

    def host_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- files --------------------------------------------------------------------------------
    @property
    def central(self) -> Path:
        return self.home / "data" / "v2.db"

    def sessions(self, folder_ag: str | None = None) -> list[Path]:
        pattern = f"{folder_ag or '*'}/sess-*"
        return sorted(p for p in (self.home / "data" / "v2-sessions").glob(pattern) if p.is_dir())

    def cli_mg(self) -> str:
        [(mg,)] = rows(self.central, "SELECT id FROM messaging_groups WHERE channel_type='cli'")
        return str(mg)

    def main_ag(self) -> str:
        [(ag,)] = rows(self.central, "SELECT id FROM agent_groups WHERE folder='main'")
        return str(ag)

    def write_settings(self, text: str) -> None:
        with open(self.home / "carapace.toml", "a") as f:
            f.write(text)

    def owner_dm(self, channel_type: str, user: str, name: str) -> str:
        """What a person does for their own DM: the user (``<channel>:<id>``), made owner,
        the DM chat (strict) wired to ``main`` answering everything. Returns the chat's id."""
        self.ok("users", "create", "--id", user, "--kind", channel_type, "--display-name", name)
        self.ok("roles", "grant", "--user", user, "--role", "owner")
        dm = self.ok("messaging-groups", "create", "--channel-type", channel_type,
                     "--platform-id", user, "--name", name,
                     "--unknown-sender-policy", "strict")["id"]  # fmt: skip
        self.ok("wirings", "create", "--messaging-group-id", dm, "--agent-group-id", "main",
                "--engage-mode", "pattern", "--engage-pattern", ".")  # fmt: skip
        return str(dm)
