"""Chaos harness: N messages over M chats through a real host, with random SIGKILLs of
runners and of the host and an optional disk-full window (issue 14).

Usage::

    carapace bench chaos [--n 200] [--chats 8] [--runner-kills 40] [--host-kills 5]
                          [--disk-full SECONDS] [--backend subprocess|bwrap] [--json]
                          [--home DIR] [--seed S] [--settle 180]

What it does: a fresh home (a temp folder unless ``--home``) with M agent groups, each
wired to the local CLI chat with the engage pattern ``^@cK\\b`` (so "chat" K is agent K's
session and runner); ``carapace run`` as a child process; one CLI client (chat mode on
``data/cli.sock``) sending ``@cK msg i`` with ids ``chaos-i`` at a steady pace. Meanwhile
it SIGKILLs random runners (pids from the sessions' ``.runner.pid``; they are children of
the host it started) and, ``--host-kills`` times, the host itself, then starts it again and
reconnects. A message the host did not acknowledge (it died first, or refused to store it)
is sent again with the same id: the router takes an id once.

Disk full (``--disk-full S``): when running as root and a tmpfs can be mounted, the home
lives on a 256 MiB tmpfs and, for S seconds in the middle of the run, a filler file takes
every free byte. Otherwise the host is started with SIGXFSZ ignored and its file-size
limit is lowered (``prlimit``) for the window: files cannot grow, writes that need to grow
a file fail (EFBIG); an approximation of a full disk that spares runners started before
the window. The report says which one ran.

Counted, per message, from what the client received:

* answered — a reply naming it (``in_reply_to`` or ``answers``);
* failed-with-notice — the reply is a failure notice ("could not be answered", "the model
  provider failed");
* lost — neither, when the run ends (``--settle`` seconds after the last send at most);
* duplicated — a reply row received again (same key: a re-send after a host crash), plus
  a message answered by more than one reply row (a turn answered twice).

Prints lost / duplicated / failed-with-notice / p99 settle time (first send → first
answer). Exit status 1 on any loss, or on more duplicates than host kills.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARAPACE = [sys.executable, "-m", "carapace"]
NOTICE_RE = re.compile(r"could not be answered|the model provider failed")
TMPFS_SIZE = "256m"


@dataclass
class Tally:
    sent_at: dict[str, float] = field(default_factory=dict)  # first send
    acked: set[str] = field(default_factory=set)
    answered_at: dict[str, float] = field(default_factory=dict)
    replies_for: dict[str, set[str]] = field(default_factory=dict)  # message → reply keys
    noticed: set[str] = field(default_factory=set)
    received: dict[str, int] = field(default_factory=dict)  # reply key → times received
    runner_kills: int = 0
    host_kills: int = 0
    host_restarts: int = 0  # the host exited on its own and was started again
    resent: int = 0
    disk_full: str = "off"

    def report(self) -> dict[str, Any]:
        lost = sorted(set(self.sent_at) - set(self.answered_at))
        dup_rows = sum(n - 1 for n in self.received.values() if n > 1)
        dup_answers = sum(len(k) - 1 for m, k in self.replies_for.items() if len(k) > 1)
        settle = sorted(self.answered_at[m] - self.sent_at[m] for m in self.answered_at)
        p99 = settle[min(len(settle) - 1, int(0.99 * len(settle)))] if settle else None
        return {
            "messages": len(self.sent_at),
            "answered": len(self.answered_at) - len(self.noticed & set(self.answered_at)),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "duplicated": dup_rows + dup_answers,
            "duplicate_rows": dup_rows,
            "answered_twice": dup_answers,
            "failed_with_notice": len(self.noticed),
            "p99_settle_s": round(p99, 3) if p99 is not None else None,
            "runner_kills": self.runner_kills,
            "host_kills": self.host_kills,
            "host_restarts": self.host_restarts,
            "resent_unacked": self.resent,
            "disk_full": self.disk_full,
        }


def setup_home(home: Path, chats: int, backend: str) -> None:
    """An initialised home with ``chats`` agent groups wired to the CLI chat."""
    subprocess.run([*CARAPACE, "init", "--home", str(home)], check=True, capture_output=True)
    with open(home / "carapace.toml", "a") as f:
        f.write(f'runner_backend = "{backend}"\nrunner_idle_exit_s = 30\n')
    from carapace.bootstrap import open_home
    from carapace.config import Home
    from carapace.db import groups, messaging

    db, _ = open_home(Home(home))
    try:
        [(mg,)] = db.execute("SELECT id FROM messaging_groups WHERE channel_type='cli'").fetchall()
        for w in messaging.wirings_for_chat(db, mg):
            messaging.delete_wiring(db, w.id)
        for k in range(chats):
            ag = groups.create_agent_group(db, f"Chat {k}", f"c{k}").id
            messaging.create_wiring(db, mg, ag, engage_mode="pattern",
                                    engage_pattern=rf"^@c{k}\b")  # fmt: skip
    finally:
        db.close()


class HostProc:
    def __init__(self, home: Path, log: Path, fsize_trick: bool) -> None:
        self.home, self.log, self.fsize_trick = home, log, fsize_trick
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for name in ("cli.sock", "ncl.sock"):
            (self.home / "data" / name).unlink(missing_ok=True)

        def preexec() -> None:
            if self.fsize_trick:  # a write past the limit fails (EFBIG) instead of killing
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*CARAPACE, "run", "--home", str(self.home)],
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=preexec)  # fmt: skip

    def restart_if_dead(self) -> bool:
        """What a service manager does (``Restart=on-failure``): a host that exited on its
        own — e.g. it could not start while the disk was full — is started again."""
        if self.proc is not None and self.proc.poll() is not None:
            self.start()
            return True
        return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9


def runner_pids(home: Path) -> list[int]:
    """Live runners of this home: a pid file can outlive its process and its pid be reused,
    so a pid counts only while its command line names this home (never kill a stranger)."""
    pids = []
    for f in (home / "data" / "v2-sessions").glob("*/*/.runner.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(f.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(f.parent).encode() in cmdline:
                pids.append(pid)
    return pids


def _base_id(message_id: str) -> str:
    return message_id.split(":", 1)[0]


class Client:
    """One chat-mode connection; reconnects whenever the host comes back."""

    def __init__(self, home: Path, tally: Tally) -> None:
        self.home, self.tally = home, tally
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.texts: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(self.home / "data" / "cli.sock"), limit=1 << 22
                )
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.writer = writer
            writer.write(b'{"type": "hello", "mode": "chat"}\n')
            self.connected.set()
            for mid in [m for m in self.texts if m not in self.tally.acked]:
                self.tally.resent += 1
                await self.say(mid)
            while True:
                try:
                    line = await reader.readline()
                except (OSError, ValueError):
                    line = b""
                if not line:
                    break
                self.handle(json.loads(line))
            self.connected.clear()
            self.writer = None
            writer.close()

    async def say(self, mid: str) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(OSError):
            line = {"id": mid, "text": self.texts[mid], "senderId": "cli:chaos"}
            self.writer.write((json.dumps(line) + "\n").encode())
            await self.writer.drain()

    def handle(self, msg: dict[str, Any]) -> None:
        t = self.tally
        now = time.monotonic()
        if msg.get("type") == "ack":
            mid = str(msg.get("id"))
            if msg.get("routed"):
                t.acked.add(mid)
            return  # dropped (e.g. not stored): resent at the next reconnect or sweep
        if msg.get("type") != "message":
            return
        key = str(msg.get("key") or msg.get("id"))
        if msg.get("key") or msg.get("id"):  # a reply row (a host notice has no row id:
            t.received[key] = t.received.get(key, 0) + 1  # several are not a re-send)
        raw = msg.get("answers")
        answers: list[Any] = raw if isinstance(raw, list) else []
        ids = {_base_id(i) for i in [msg.get("in_reply_to"), *answers] if isinstance(i, str)}
        notice = bool(NOTICE_RE.search(str(msg.get("text") or "")))
        for mid in ids & set(t.sent_at):
            t.answered_at.setdefault(mid, now)
            t.replies_for.setdefault(mid, set()).add(key)
            if notice:
                t.noticed.add(mid)


class DiskFull:
    """A window during which the home's file system has no free byte (see module doc)."""

    def __init__(self, home: Path, mounted: bool, host: HostProc) -> None:
        self.home, self.mounted, self.host = home, mounted, host
        self.filler = home.parent / "filler"

    def begin(self) -> None:
        if self.mounted:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                for size in (1 << 20, 4096, 1):  # every free byte
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * size)
            finally:
                os.close(fd)
        elif self.host.proc is not None:
            with contextlib.suppress(OSError):
                _, hard = resource.prlimit(self.host.proc.pid, resource.RLIMIT_FSIZE)
                resource.prlimit(self.host.proc.pid, resource.RLIMIT_FSIZE, (4096, hard))

    def end(self) -> None:
        if self.mounted:
            self.filler.unlink(missing_ok=True)
        elif self.host.proc is not None:
            with contextlib.suppress(OSError):
                resource.prlimit(self.host.proc.pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # fmt: skip


def home_and_mount(args: argparse.Namespace, root: Path) -> tuple[Path, bool]:
    """The home, and whether it lives on a tmpfs mounted for the disk-full window. A home
    given with ``--home`` is never on that tmpfs: its window is the file-size limit, so
    the filler never fills the file system that holds it (as root it once filled the
    machine's disk)."""
    if args.home:
        return Path(args.home), False
    mounted = bool(args.disk_full) and try_mount_tmpfs(root / "fs")
    return (root / "fs" if mounted else root) / "home", mounted


def try_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                        str(path)], capture_output=True)  # fmt: skip
    return r.returncode == 0


async def chaos(args: argparse.Namespace, root: Path) -> Tally:
    rng = random.Random(args.seed)
    tally = Tally()
    home, mounted = home_and_mount(args, root)
    if args.disk_full:
        tally.disk_full = "tmpfs" if mounted else "file-size limit (prlimit RLIMIT_FSIZE)"
    try:
        setup_home(home, args.chats, args.backend)
        host = HostProc(home, root / "host.log", fsize_trick=bool(args.disk_full) and not mounted)
        host.start()
        client = Client(home, tally)
        stop = asyncio.Event()
        conn = asyncio.create_task(client.run(stop))
        await asyncio.wait_for(client.connected.wait(), 60)
        disk = DiskFull(home, mounted, host)
        pace = args.duration / max(1, args.n)
        kill_at = sorted(rng.sample(range(1, args.n), min(args.host_kills, args.n - 1)))
        runner_p = args.runner_kills / max(1, args.n)
        full_from = args.n // 3 if args.disk_full else -1
        full_until = 0.0
        for i in range(args.n):
            mid = f"chaos-{i}"
            client.texts[mid] = f"@c{i % args.chats} message {i}"
            tally.sent_at[mid] = time.monotonic()
            await client.say(mid)
            if i == full_from:
                disk.begin()
                full_until = time.monotonic() + args.disk_full
            if full_until and time.monotonic() >= full_until:
                disk.end()
                full_until = 0.0
            if rng.random() < runner_p:
                pids = runner_pids(home)
                if pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        tally.runner_kills += 1
            if kill_at and i == kill_at[0]:
                kill_at.pop(0)
                host.kill()
                tally.host_kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                host.start()
            await asyncio.sleep(pace)
            if host.restart_if_dead():
                tally.host_restarts += 1
        if full_until:
            await asyncio.sleep(max(0.0, full_until - time.monotonic()))
            disk.end()
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline and set(tally.sent_at) - set(tally.answered_at):
            await asyncio.sleep(0.25)
            if host.restart_if_dead():
                tally.host_restarts += 1
            unacked = [m for m in client.texts if m not in tally.acked]
            if unacked and client.connected.is_set() and rng.random() < 0.1:
                for m in unacked:  # refused while the disk was full: the sender retries
                    tally.resent += 1
                    await client.say(m)
        await asyncio.sleep(1.0)  # late duplicates, if any, arrive now
        stop.set()
        code = host.stop()
        conn.cancel()
        with contextlib.suppress(BaseException):
            await conn
        if code not in (0, -15):
            print(f"host exit code {code}", file=sys.stderr)
        return tally
    finally:
        for pid in runner_pids(home):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if mounted:
            subprocess.run(["umount", "-l", str(root / "fs")], capture_output=True)


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d ")  # a log record's first line


def count_tracebacks(log: str) -> tuple[int, int]:
    """(tracebacks of the host's own, failures of the log to write itself). On a full
    disk every log record fails to be written and Python's ``logging`` prints a
    "--- Logging error ---" block with tracebacks of its own: those are counted apart."""
    own = failures = 0
    in_failure = False
    for line in log.splitlines():
        if line.startswith("--- Logging error ---"):
            failures += 1
            in_failure = True
        elif _RECORD.match(line):
            in_failure = False
        elif line.startswith("Traceback") and not in_failure:
            own += 1
    return own, failures


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    assert __doc__ is not None
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="messages")
    p.add_argument("--chats", type=int, default=8, help="chats (agent sessions)")
    p.add_argument("--runner-kills", type=int, default=40, help="expected runner SIGKILLs")
    p.add_argument("--host-kills", type=int, default=5, help="host SIGKILLs")
    p.add_argument("--disk-full", type=float, default=0.0, help="seconds of full disk (0: off)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to send over")
    p.add_argument("--settle", type=float, default=180.0, help="max wait for the last answers")
    p.add_argument("--backend", default="subprocess", choices=["subprocess", "bwrap"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--home", default=None, help="use this (new) home instead of a temp one")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    with tempfile.TemporaryDirectory(prefix="carapace-chaos-") as tmp:
        tally = asyncio.run(chaos(args, Path(tmp)))
        log = (Path(tmp) / "host.log").read_text(errors="replace")
        if os.environ.get("CHAOS_KEEP_LOG"):
            shutil.copy(Path(tmp) / "host.log", os.environ["CHAOS_KEEP_LOG"])
    rep = tally.report()
    rep["host_log_tracebacks"], rep["log_write_failures"] = count_tracebacks(log)
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"messages {rep['messages']} over {args.chats} chats: lost {rep['lost']}, "
              f"duplicated {rep['duplicated']} (rows re-sent {rep['duplicate_rows']}, "
              f"answered twice {rep['answered_twice']}), failed-with-notice "
              f"{rep['failed_with_notice']}, p99 settle {rep['p99_settle_s']} s; "
              f"runner kills {rep['runner_kills']}, host kills {rep['host_kills']}, "
              f"disk full: {rep['disk_full']}")  # fmt: skip
        if rep["lost"]:
            print(f"lost: {', '.join(rep['lost_ids'])}")
    bad = rep["lost"] > 0 or rep["duplicated"] > rep["host_kills"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
