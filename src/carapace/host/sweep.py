"""The sweep: ack sync, due wakes, stuck/idle stops, retries, recurrence hook (spec §5).

Visits only the sessions in the work index (``carapace_session_work``) whose ``next_due``
has come; after a visit the session's next due time is recomputed (earliest future
``process_after``, the next SLA check while a runner lives, a delivery retry) or the
session leaves the index when nothing is pending. The host arms one timer for the
earliest ``next_due``; no 60 s tick is needed for correctness.

Deviations from NanoClaw (docs/compat.md):
* ``failed`` acks stay ``failed`` (§11.1 item 5).
* ``kind='system'`` rows never count as due (§11.1 item 3).
* Stale claims of a dead runner are reset (a try counted) *before* a new runner is woken,
  and claims older than the current runner are ignored by the stuck check (§11.1 4/4b).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from carapace.db.connection import column_names, has_table, is_busy, transaction
from carapace.db.session import (
    SessionPaths,
    heartbeat_mtime,
    insert_message_out,
    open_inbound,
    trigger_clause,
)
from carapace.db.sessions import Session
from carapace.host.outbox_reader import (
    MAX_IDS,
    OutboxRefused,
    open_checked,
    read_acks,
    read_container_state,
)
from carapace.jsonutil import dumps
from carapace.limits import MAX_TOOL_TIMEOUT_S
from carapace.timefmt import iso, parse_ts, sqlite_ts

logger = logging.getLogger(__name__)

ABSOLUTE_CEILING_S = 30 * 60.0
CLAIM_STUCK_S = 60.0
BACKOFF_BASE_S = 5.0
SLA_CHECK_S = 30.0
ACK_BATCH = 64  # terminal acks noted after runner commits, copied into messages_in together
ACK_FLUSH_S = 1.0  # … at most this long after the first of them

StuckAction = Literal["ok", "kill-ceiling", "kill-claim"]


@dataclass(frozen=True)
class Claim:
    message_id: str
    claimed_at: datetime | None


def decide_stuck_action(
    now: datetime,
    heartbeat: datetime | None,
    container_state: dict[str, Any] | None,
    claims: list[Claim],
) -> tuple[StuckAction, str | None]:
    """Spec §5.4, pure. ``heartbeat`` None = no heartbeat file (a fresh runner)."""
    bash_s = 0.0
    if container_state and container_state.get("current_tool") == "Bash":
        ms = container_state.get("tool_declared_timeout_ms")
        if isinstance(ms, int | float):  # agent-written: capped (limits.MAX_TOOL_TIMEOUT_S)
            bash_s = min(max(float(ms) / 1000.0, 0.0), MAX_TOOL_TIMEOUT_S)
    if heartbeat is not None:
        age = (now - heartbeat).total_seconds()
        if age > max(ABSOLUTE_CEILING_S, bash_s):
            return "kill-ceiling", None
    tolerance = max(CLAIM_STUCK_S, bash_s)
    for c in claims:
        if c.claimed_at is None:
            continue
        if (now - c.claimed_at).total_seconds() <= tolerance:
            continue
        if heartbeat is not None and heartbeat > c.claimed_at:
            continue
        return "kill-claim", c.message_id
    return "ok", None


class HostSeen:
    """Agent-written timestamps (heartbeat mtime, claim times) on the host's clock.

    A value counts as no later than the host time it was first seen with: a heartbeat or
    claim dated in the future ages from the moment the host saw it, and only a *changed*
    value (the runner really beat again) is fresh."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[datetime, datetime]] = {}

    def clamp(self, sid: str, key: str, value: datetime | None, now: datetime) -> datetime | None:
        if value is None:
            self._seen.pop((sid, key), None)
            return None
        prev = self._seen.get((sid, key))
        if prev is None or prev[0] != value:
            self._seen[(sid, key)] = (value, now)
            first = now
        else:
            first = prev[1]
        return min(value, first)

    def forget(self, sid: str) -> None:
        for key in [k for k in self._seen if k[0] == sid]:
            del self._seen[key]


def retry_backoff_s(tries: int) -> float:
    """5, 10, 20, 40, 80 s for tries 0..4."""
    return BACKOFF_BASE_S * float(2**tries)


@dataclass
class SweepContext:
    """What the per-session hook gets (the scheduling engineer's seam)."""

    session: Session
    paths: SessionPaths
    inbound: sqlite3.Connection
    now: datetime
    timezone: str
    # read by the sweep off the session's writer thread (where the hook runs), so the hook
    # makes no outbound.db read of its own: the outbound side's highest seq as the host
    # knows it, and the task rows it has not settled yet with their acks
    other_max: int | None = None
    tasks: TaskRows | None = None
    # rows still pending in ``inbound`` that the runner has finished ({id: "completed" or
    # "failed"}, from its acks): copied into the file by the session's writer, maybe later
    done: dict[str, str] = field(default_factory=dict)

    @property
    def task_acks(self) -> tuple[frozenset[str], dict[str, tuple[str, str | None]]] | None:
        """(ids whose acks were looked at, {id: (status, changed)}), None when none were."""
        t = self.tasks
        return (t.looked, t.acks) if t is not None and t.acks_read else None


class SweepHooks(Protocol):
    def on_sweep_session(self, ctx: SweepContext) -> datetime | None:
        """Called once per swept session that has a task or a recurring row (the others
        have nothing for it), on the session's writer thread, ``ctx.inbound`` its
        connection (never on the event loop: what it does may take a durable commit).
        Returns when it next needs the session."""
        ...


@dataclass(frozen=True)
class TaskLook:
    """Where a hook's last look at a session's task rows ended: every task row of the file
    ``file`` (device, inode) up to seq ``upto`` is settled but those in ``open``. The next
    scan reads only what is newer and the open rows: what a look costs does not grow with
    the session's history (a minutely task makes 1,440 rows a day)."""

    file: tuple[int, int]
    upto: int
    open: frozenset[str] = frozenset()


class TaskRow(NamedTuple):  # (a tuple: the first look after a start reads thousands)
    id: str
    seq: int
    series_id: str | None
    status: str
    process_after: str | None
    timestamp: str | None


@dataclass
class TaskRows:
    """The task rows a scan found for the hook: those after its :class:`TaskLook` (all, the
    first time) and its open ones, from the last :data:`TASK_HISTORY_WINDOW` only, with
    the acks of them and of every row that carries a recurrence (``looked``: the ids whose
    acks were read; ``acks_read``: False when ``outbound.db`` could not be read)."""

    file: tuple[int, int]
    upto: int
    rows: list[TaskRow]
    looked: frozenset[str]
    acks: dict[str, tuple[str, str | None]]
    acks_read: bool


@dataclass
class SweepReport:
    visited: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    killed: list[tuple[str, str]] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # sessions whose sweep raised


def _ts(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        return None


def ack_state(inb: sqlite3.Connection, outbound: Path
              ) -> tuple[dict[str, str], dict[str, datetime | None]]:  # fmt: skip
    """The acks of the *pending* rows: (terminal ones to copy into ``messages_in``: {id:
    status}, open claims: {id: when}). Reads only: the copy is the session writer's
    (:func:`apply_acks_on`). ``outbound.db`` is read through the defensive reader
    (``OutboxRefused`` if refused)."""
    pending = [r[0] for r in inb.execute("SELECT id FROM messages_in WHERE status='pending'")]
    done: dict[str, str] = {}
    claims: dict[str, datetime | None] = {}
    if not pending:
        return done, claims
    for mid, (status, changed) in read_acks(outbound, pending).items():
        if status in ("completed", "failed"):
            done[mid] = status
        elif status == "processing":
            claims[mid] = _ts(changed)
    return done, claims


def new_acks(outbound: Path, after_rowid: int) -> tuple[int, dict[str, str]]:
    """Acks written or rewritten since ``after_rowid`` (the runner's ``INSERT OR REPLACE``
    gives a changed ack a new rowid): (highest rowid read, {message id: status}). One
    indexed read; a rowid reused after a delete can be missed here, which the sweep's full
    look (:func:`ack_state`) covers."""
    with open_checked(outbound) as conn:
        return new_acks_on(conn, after_rowid)


def new_acks_on(conn: sqlite3.Connection, after_rowid: int) -> tuple[int, dict[str, str]]:
    """:func:`new_acks` on a checked connection (``outbox_reader.read_pass``'s ``also``)."""
    if not has_table(conn, "processing_ack"):
        return after_rowid, {}
    if after_rowid < 0:  # first read for this runner: only the latest few, not history
        top = conn.execute("SELECT MAX(rowid) FROM processing_ack").fetchone()[0]
        after_rowid = max(0, int(top or 0) - ACK_BATCH)
    rows = conn.execute(
        "SELECT rowid, substr(message_id, 1, 1024), substr(status, 1, 32) "
        "FROM processing_ack WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after_rowid, MAX_IDS),
    ).fetchall()
    top = max((int(r[0]) for r in rows), default=after_rowid)
    return top, {str(r[1]): str(r[2]) for r in rows}


def apply_acks_on(inb: sqlite3.Connection, done: dict[str, str]) -> bool:
    """Terminal acks into ``messages_in`` in one transaction, on the session writer's
    connection. True when a task row was among them (the sweep then records its run)."""
    if not done:
        return False
    with transaction(inb):
        inb.executemany(
            "UPDATE messages_in SET status=? WHERE id=? AND status='pending'",
            [(st, mid) for mid, st in done.items()],
        )
    ids = list(done)[:MAX_IDS]
    marks = ",".join("?" for _ in ids)
    row = inb.execute(
        f"SELECT 1 FROM messages_in WHERE kind='task' AND id IN ({marks}) LIMIT 1", ids
    ).fetchone()
    return row is not None


def idle_since(paths: SessionPaths, now: datetime, started: datetime) -> datetime | None:
    """None while the session has due or claimed work, else since when its runner has been
    idle (its last heartbeat, or its start; ``now`` bounds it). Reads files: a worker thread."""
    scan = scan_session(paths, now)
    if scan.due_now or scan.claims:
        return None
    hb = heartbeat_at(paths)
    last = max(started, hb) if hb is not None else started
    return min(last, now)


def reset_claims(
    paths: SessionPaths, now: datetime, max_tries: int, *, count_try: bool
) -> tuple[list[str], list[str]]:
    """A runner died holding claims: bump tries with backoff (or fail at the limit) and
    delete the stale claims. Only call when no runner lives (the host then may write
    ``outbound.db``). Returns (retried ids, failed ids)."""
    try:
        with (
            open_checked(paths.outbound, write=True) as out,
            contextlib.closing(open_inbound(paths)) as inb,
        ):
            try:
                return _reset(out, inb, now, max_tries, count_try)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                logger.info("claims of session %s not reset now (inbound.db in use): at its "
                            "next look", paths.root.name)  # fmt: skip
                return [], []
    except FileNotFoundError:
        return [], []
    except (OSError, OutboxRefused) as exc:
        logger.warning("claims of session %s not reset: %s", paths.root.name, exc)
        return [], []


def _reset(
    out: sqlite3.Connection, inb: sqlite3.Connection, now: datetime, max_tries: int,
    count_try: bool,
) -> tuple[list[str], list[str]]:  # fmt: skip
    """The tries counted in one ``inbound.db`` transaction (its commit gives up at once
    under a reader's lock: nothing changed, the claims kept for the next look), then the
    senders of failed messages told and the claims deleted."""
    if not has_table(out, "processing_ack"):
        return [], []
    ids = [str(r[0]) for r in out.execute(
        "SELECT message_id FROM processing_ack WHERE status='processing' LIMIT ?",
        (MAX_IDS,))]  # fmt: skip
    retried: list[tuple[str, int]] = []
    failed: list[tuple[str, int, tuple[Any, Any, Any]]] = []
    if count_try and ids:
        with transaction(inb):
            for mid in ids:
                row = inb.execute(
                    "SELECT tries, process_after, channel_type, platform_id, thread_id "
                    "FROM messages_in WHERE id=? AND status='pending'",
                    (mid,),
                ).fetchone()
                if row is None:
                    continue
                after = _ts(row[1])
                if after is not None and after > now:
                    continue
                tries = int(row[0] or 0)
                if tries >= max_tries:
                    inb.execute("UPDATE messages_in SET status='failed' WHERE id=?", (mid,))
                    failed.append((mid, tries, (row[2], row[3], row[4])))
                else:
                    due = now + timedelta(seconds=retry_backoff_s(tries))
                    inb.execute(
                        "UPDATE messages_in SET tries=tries+1, process_after=? WHERE id=?",
                        (sqlite_ts(due), mid),
                    )
                    retried.append((mid, tries))
    for mid, tries, routing in failed:
        logger.error("message %s failed after %d tries", mid, tries)
        tell_sender_failed(out, inb, mid, routing, tries, now)
    for mid, tries in retried:
        logger.warning("message %s retried in %.0f s (try %d)", mid, retry_backoff_s(tries),
                       tries + 1)  # fmt: skip
    out.execute("DELETE FROM processing_ack WHERE status='processing'")
    return [m for m, _ in retried], [m for m, _, _ in failed]


FAILED_TEXT = (
    "Sorry — your message could not be answered: the assistant's runner stopped {tries} "
    "times while working on it (a crash, a limit or a stuck tool). Send it again, perhaps "
    "shorter or split in parts; if it keeps happening, an admin can look at `carapace logs`."
)


def tell_sender_failed(
    out: sqlite3.Connection, inb: sqlite3.Connection, mid: str,
    routing: tuple[Any, Any, Any], tries: int, now: datetime,
) -> None:  # fmt: skip
    """A message given up on is told to its sender, in its chat: one ``messages_out`` row
    (inside the caller's claim-reset transaction; delivery sends it). Its id comes from the
    message's, so it is written once. Not for agent or system rows (no person waits)."""
    channel_type, platform_id, thread_id = routing
    if not channel_type or not platform_id or channel_type == "agent":
        return
    rid = "fail-" + hashlib.sha256(mid.encode("utf-8", "replace")).hexdigest()[:24]
    if out.execute("SELECT 1 FROM messages_out WHERE id=?", (rid,)).fetchone() is not None:
        return
    top = inb.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_in").fetchone()[0]
    insert_message_out(out, {
        "id": rid, "in_reply_to": mid, "timestamp": sqlite_ts(now), "kind": "chat",
        "channel_type": channel_type, "platform_id": platform_id, "thread_id": thread_id,
        "content": dumps({"text": FAILED_TEXT.format(tries=tries)}),
    }, other_max=int(top or 0))  # fmt: skip
    logger.info("message %s: its sender is told it failed (row %s)", mid, rid)


TASK_HISTORY_WINDOW = timedelta(days=3)  # finished occurrences recorded at most this late
# (each reads the rows it names through a partial index: db/session.py HOST_INDEXES)
SERIES_PRESENT = (
    "SELECT 1 FROM messages_in WHERE recurrence IS NOT NULL AND recurrence != '' LIMIT 1"
)
RECURRING_IDS = "SELECT id FROM messages_in WHERE recurrence IS NOT NULL AND recurrence != ''"
TASK_MAX_SEQ = "SELECT MAX(seq) FROM messages_in WHERE kind = 'task'"
_RECENT = (  # (a time SQLite cannot read is kept: the hook reads it again)
    "(datetime(COALESCE(process_after, timestamp)) IS NULL "
    "OR datetime(COALESCE(process_after, timestamp)) >= datetime(?))"
)
_TASK_COLUMNS = "id, seq, series_id, status, process_after, timestamp"


def _rows_since(cols: str = _TASK_COLUMNS, also: str = "") -> str:
    """The task rows in (?, ?] of seq, of the window from ?: ``cols``, ``also`` a further
    condition."""
    return (f"SELECT {cols} FROM messages_in WHERE kind = 'task' AND seq > ? AND seq <= ? "
            f"AND {_RECENT}{also} ORDER BY seq")  # fmt: skip


TASK_ROWS_SINCE = _rows_since()


_UNRECORDED = "id NOT IN (SELECT id FROM central.carapace_task_runs)"


def _attach_central(inb: sqlite3.Connection, central: Path) -> bool:
    """The central DB attached read-only to the scan's connection as ``central`` (False:
    it could not be; the first look then reads every row of the window)."""
    try:
        uri = f"file:{central.resolve().as_posix()}?mode=ro"
        inb.execute("ATTACH DATABASE ? AS central", (uri,))
        inb.execute("SELECT 1 FROM central.carapace_task_runs LIMIT 1").fetchall()
    except (OSError, sqlite3.Error):
        with contextlib.suppress(sqlite3.Error):
            inb.execute("DETACH DATABASE central")
        return False
    return True


def _task_columns(inb: sqlite3.Connection) -> str:
    """:data:`_TASK_COLUMNS` of the file (one NanoClaw made before ``series_id`` and not yet
    upgraded by the host: each row was its own series)."""
    if "series_id" in column_names(inb, "messages_in"):
        return _TASK_COLUMNS
    return _TASK_COLUMNS.replace("series_id", "id AS series_id")


@dataclass
class SessionScan:
    due_now: bool
    next_due: datetime | None
    claims: dict[str, datetime | None]
    tasks: TaskRows | None = None
    series: bool = True  # any task or recurring row: the series hook has work to look at
    # pending rows the runner has finished (ids: "completed"/"failed"), not yet copied
    done: dict[str, str] = field(default_factory=dict)


def scan_session(paths: SessionPaths, now: datetime, look: TaskLook | None = None,
                 central: Path | None = None) -> SessionScan:  # fmt: skip
    """The acks and the due computation for one session (opens and closes its DBs). Only
    reads: the session's writer thread holds the one write connection to ``inbound.db``
    (a second one met its lock under load), so the finished rows found are in ``done``,
    counted as finished here, for the caller to have them copied. ``look``: where the
    series hook's last look ended, ``central``: the central DB (:func:`task_rows`)."""
    try:
        st = paths.inbound.stat()
    except OSError:
        return SessionScan(False, None, {}, series=False)
    inb = open_inbound(paths, readonly=True)
    try:
        if not has_table(inb, "messages_in"):  # (made by the host's first write)
            return SessionScan(False, None, {}, series=False)
        done: dict[str, str] = {}
        claims: dict[str, datetime | None] = {}
        try:
            done, claims = ack_state(inb, paths.outbound)
        except (OSError, OutboxRefused):
            pass  # missing, or refused (logged and told by delivery)
        due_now, next_due = False, None
        for r in inb.execute(
            "SELECT id, process_after FROM messages_in WHERE status='pending' "
            f"{trigger_clause(inb)}AND kind != 'system'"
        ):
            if r[0] in done:
                continue
            after = _ts(r[1])
            if after is None or after <= now:
                due_now = True
            elif next_due is None or after < next_due:
                next_due = after
        upto = inb.execute(TASK_MAX_SEQ).fetchone()[0]
        series = upto is not None or inb.execute(SERIES_PRESENT).fetchone() is not None
        tasks = None
        if series:
            tasks = task_rows(inb, paths.outbound, (st.st_dev, st.st_ino), int(upto or 0),
                              now, look, central)  # fmt: skip
        return SessionScan(due_now, next_due, claims, tasks, series, done)
    finally:
        inb.close()


def task_rows(inb: sqlite3.Connection, outbound: Path, file: tuple[int, int], upto: int,
              now: datetime, look: TaskLook | None,
              central: Path | None = None) -> TaskRows:  # fmt: skip
    """The task rows the hook has not settled (see :class:`TaskRows`), read up to ``upto``
    (the highest task seq, read first: seqs only grow, so a row written meanwhile is
    after it and read next time). A first look (no ``look``) with ``central`` leaves out
    the rows the task history holds already: after a start, a minutely task's three days
    are 4,320 rows, nearly all recorded, which the reader and the hook built, read the
    acks of and looked up one by one in Python (GIL turns beside the event loop)."""
    since = sqlite_ts(now - TASK_HISTORY_WINDOW)
    start: int = -1
    open_ids: frozenset[str] = frozenset()
    if look is not None and look.file == file and look.upto <= upto:
        start, open_ids = look.upto, look.open  # (else: another file, or one made anew)
    cols = _task_columns(inb)
    cur = inb.cursor()
    cur.row_factory = None  # (plain tuples)
    attached = start < 0 and central is not None and _attach_central(inb, central)
    sql = _rows_since(cols, f" AND {_UNRECORDED}" if attached else "")
    try:
        rows = list(map(TaskRow._make, cur.execute(sql, (start, upto, since))))
    finally:
        if attached:
            with contextlib.suppress(sqlite3.Error):
                inb.execute("DETACH DATABASE central")
    ids = list(open_ids)
    for i in range(0, len(ids), MAX_IDS):
        chunk = ids[i : i + MAX_IDS]
        marks = ",".join("?" for _ in chunk)
        sql = (f"SELECT {cols} FROM messages_in WHERE id IN ({marks}) AND seq <= ? "
               f"AND kind = 'task' AND {_RECENT}")  # fmt: skip
        rows.extend(map(TaskRow._make, cur.execute(sql, (*chunk, start, since))))
    looked = [r.id for r in rows]
    looked += [str(r[0]) for r in inb.execute(RECURRING_IDS)]
    looked = list(dict.fromkeys(looked))
    try:
        acks, read = read_acks(outbound, looked), True
    except (OSError, OutboxRefused):
        acks, read = {}, False
    return TaskRows(file, upto, rows, frozenset(looked), acks, read)


def container_state(paths: SessionPaths) -> dict[str, Any] | None:
    try:
        return read_container_state(paths.outbound)
    except (OSError, OutboxRefused):
        return None


def heartbeat_at(paths: SessionPaths) -> datetime | None:
    mtime = heartbeat_mtime(paths)
    if not mtime:
        return None
    return datetime.fromtimestamp(mtime, tz=UTC)


AsyncStop = Callable[[str, str, bool], Awaitable[Any]]


def earliest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def due_iso(when: datetime | None) -> str | None:
    return None if when is None else iso(when)
