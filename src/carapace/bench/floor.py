"""The physical floor of a round trip on this machine, measured in the same run.

Two processes and the least a round trip must do: the parent commits one row to ``a.db``
(durable commit 1); the child, woken by inotify on its folder (wake 1), reads it, commits a
claim (commit 2) and a reply (commit 3) to ``b.db``; the parent, woken by inotify (wake 2),
reads the reply. Each file has the settings of the session file whose part it plays
(``db/connection.py``, ``synchronous=NORMAL``): ``a.db`` the host's ``inbound.db``
(``PERSIST``), ``b.db`` the runner's ``outbound.db`` (``TRUNCATE``), over persistent
connections. No routing, no delivery, no Python host: what is left is the disk and the
kernel.

``python -m carapace.bench.floor DIR`` is the child.
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from carapace.db.connection import (
    INBOUND_JOURNAL_MODE,
    OUTBOUND_JOURNAL_MODE,
    session_write_pragmas,
)
from carapace.stats import percentile
from carapace.watch import DirWatcher

SCHEMA = "CREATE TABLE IF NOT EXISTS m (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)"
TIMEOUT_S = 30.0
POLL_S = 1.0  # both sides also look every second (a missed wake shows as a ~1 s outlier)
MODES = {"a.db": INBOUND_JOURNAL_MODE, "b.db": OUTBOUND_JOURNAL_MODE}  # the host's, the runner's


def _conn(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
    session_write_pragmas(conn, MODES[path.name])
    conn.execute(SCHEMA)
    return conn


def _max(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM m").fetchone()[0])


def child(root: Path) -> int:
    a, b = _conn(root / "a.db"), _conn(root / "b.db")
    w = DirWatcher()
    w.add(root, names={"a.db", "a.db-journal"}, settle=True)
    seen = _max(a)  # before "ready": the parent's first row comes after it
    print("ready", flush=True)
    while True:
        w.wait(POLL_S)
        rows = a.execute("SELECT seq, body FROM m WHERE seq > ? ORDER BY seq", (seen,)).fetchall()
        for seq, body in rows:
            if body == "stop":
                return 0
            seen = seq
            b.execute("BEGIN IMMEDIATE")
            b.execute("INSERT INTO m (seq, body) VALUES (?, 'claim')", (seq * 2,))
            b.execute("COMMIT")
            b.execute("BEGIN IMMEDIATE")
            b.execute("INSERT INTO m (seq, body) VALUES (?, ?)", (seq * 2 + 1, "re:" + body))
            b.execute("COMMIT")


class Floor:
    """The floor's two processes, kept up between measurements (``carapace bench
    roundtrip`` measures it in blocks between its own, so that both meet the same moments
    of the machine). The first round trip warms the caches and is not counted."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._a, self._b = _conn(root / "a.db"), _conn(root / "b.db")
        self._w = DirWatcher()
        self._w.add(root, names={"b.db", "b.db-journal"}, settle=True)
        self._proc = subprocess.Popen([sys.executable, "-m", "carapace.bench.floor", str(root)],
                                      stdout=subprocess.PIPE, text=True)  # fmt: skip
        self._i = 0
        try:
            assert self._proc.stdout is not None
            self._proc.stdout.readline()  # "ready"
            self._trip()  # the first one warms the caches
        except BaseException:
            self.close()
            raise

    def trips(self, n: int) -> list[float]:
        """``n`` more round trips, in ms."""
        return [self._trip() for _ in range(n)]

    def _trip(self) -> float:
        self._i += 1
        i, a, b, w = self._i, self._a, self._b, self._w
        w.drain()
        t0 = time.perf_counter()
        a.execute("BEGIN IMMEDIATE")
        a.execute("INSERT INTO m (seq, body) VALUES (?, ?)", (i, f"hello {i}"))
        a.execute("COMMIT")
        deadline = t0 + TIMEOUT_S
        while b.execute("SELECT 1 FROM m WHERE seq=?", (i * 2 + 1,)).fetchone() is None:
            if time.perf_counter() > deadline:
                raise TimeoutError("floor child did not answer")
            w.wait(POLL_S)
        return (time.perf_counter() - t0) * 1000.0

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                self._a.execute("INSERT INTO m (seq, body) VALUES (?, 'stop')", (self._i + 10,))
                self._proc.wait(TIMEOUT_S)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._w.close()
            self._a.close()
            self._b.close()


def measure_floor(root: Path, n: int) -> list[float]:
    """``n`` round trips through the two-process floor, in ms."""
    floor = Floor(root)
    try:
        return floor.trips(n)
    finally:
        floor.close()


def floor_summary(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), percentile(samples, 0.99)


if __name__ == "__main__":
    sys.exit(child(Path(sys.argv[1])))
