"""Usage rows: written in batches by a background thread, totals kept for budget checks.

``record`` never touches the disk on the caller's thread: rows go to a queue that a
writer thread commits in batches (up to ``BATCH`` rows or ``FLUSH_S`` seconds), each batch
in one transaction in the central DB (``carapace_usage``). Totals per group and period
are cached in memory: loaded from the table once (after a flush), then kept up to date by
``record``.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from dataclasses import astuple, dataclass
from datetime import datetime
from pathlib import Path

from carapace.db.connection import connect
from carapace.timefmt import iso

logger = logging.getLogger(__name__)

BATCH = 500
FLUSH_S = 0.25
COLUMNS = (
    "at", "agent_group_id", "session_id", "provider", "model", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "latency_ms",
    "status", "streamed",
)  # fmt: skip


@dataclass(frozen=True)
class UsageRecord:
    at: str  # iso UTC
    agent_group_id: str
    session_id: str | None
    provider: str
    model: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float | None
    latency_ms: float
    status: int
    streamed: bool

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens + self.output_tokens + self.cache_read_tokens
            + self.cache_write_tokens
        )  # fmt: skip


def period_start(period: str, now: datetime) -> str:
    """The iso start (UTC) of the day or month containing ``now``."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return iso(start)


_STOP = object()


class UsageStore:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._queue: queue.Queue[object] = queue.Queue()
        self._reader: sqlite3.Connection | None = None
        # (group, since iso) -> [tokens, dollars]; "since" is a period start or a reset
        self._totals: dict[tuple[str, str], list[float]] = {}
        self._thread: threading.Thread | None = None  # started by the first record
        self._lock = threading.Lock()
        self.written = 0

    # -- writing ------------------------------------------------------------------------
    def record(self, rec: UsageRecord) -> None:
        for (group, since), total in self._totals.items():
            if group == rec.agent_group_id and rec.at >= since:
                total[0] += rec.tokens
                total[1] += rec.cost_usd or 0.0
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._writer, name="usage-writer", daemon=True
                    )
                    self._thread.start()
        self._queue.put(rec)

    def _writer(self) -> None:
        db = connect(self.db_path, check_same_thread=False)
        sql = (
            f"INSERT INTO carapace_usage ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)})"
        )
        try:
            stop = False
            while not stop:
                item = self._queue.get()
                batch: list[UsageRecord] = []
                done = 1
                if item is _STOP:
                    stop = True
                elif isinstance(item, UsageRecord):
                    batch.append(item)
                while not stop and len(batch) < BATCH:
                    try:
                        item = self._queue.get(timeout=FLUSH_S if batch else 0)
                    except queue.Empty:
                        break
                    done += 1
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, UsageRecord):
                        batch.append(item)
                if batch:
                    self._write(db, sql, batch)
                for _ in range(done):
                    self._queue.task_done()
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, sql: str, batch: list[UsageRecord]) -> None:
        rows = [(*astuple(r)[:-1], int(r.streamed)) for r in batch]
        for attempt in range(3):
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
                db.execute("COMMIT")
                self.written += len(rows)
                return
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                logger.warning("usage rows not written (try %d): %s", attempt + 1, exc)
        logger.error("%d usage rows lost after 3 tries", len(rows))

    def flush(self) -> None:
        """Wait until every recorded row is committed."""
        self._queue.join()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
        self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- reading --------------------------------------------------------------------------
    def used(self, group: str, since: str) -> tuple[int, float]:
        """Tokens and dollars of ``group`` since the iso time ``since``."""
        key = (group, since)
        total = self._totals.get(key)
        if total is None:
            self.flush()
            if self._reader is None:
                self._reader = connect(self.db_path, readonly=True, check_same_thread=False)
            row = self._reader.execute(
                "SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens"
                " + cache_write_tokens), 0), COALESCE(SUM(cost_usd), 0) FROM carapace_usage"
                " WHERE agent_group_id=? AND at>=?",
                key,
            ).fetchone()
            total = [float(row[0]), float(row[1])]
            if len(self._totals) > 4096:
                self._totals.clear()
            self._totals[key] = total
        return int(total[0]), float(total[1])
