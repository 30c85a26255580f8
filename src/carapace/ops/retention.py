"""Retention: keep session files bounded without ever losing work not yet done.

Policy (``[retention]`` in carapace.toml): ``days`` (default 30) and ``policy``:
``archive`` (default: the removed rows and transcripts go to gzip'd JSON lines under
``<home>/archive/<agent_group_id>/<session_id>/``), ``prune`` (removed), or ``off``.

What goes, when older than ``days``:
- ``messages_in`` rows that are ``completed`` or ``failed`` and not recurring (never a
  pending or claimed row, never the newest row of a file or of a task's series, so seq
  numbers keep growing and a series keeps its anchor);
- ``processing_ack`` rows in a final state whose inbound row is gone;
- ``messages_out`` rows already in ``delivered`` (never a recurring one, the newest one or
  one a pending question points at), and then ``delivered`` rows whose outbound row is gone;
- transcripts (``<group>/conversations/<session>.jsonl``) of sessions idle that long.

``outbound.db`` belongs to the runner: it is written only while no runner runs for the
session, and never when it carries triggers or views (it is agent-written). The group
folder is agent-written: transcripts are reached through descriptors opened ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from carapace.config import Home, Settings
from carapace.db.connection import COMMIT_WAIT_MS, connect, is_busy, transaction
from carapace.db.session import SessionPaths
from carapace.errors import ConfigError
from carapace.ops import section
from carapace.timefmt import sqlite_ts

logger = logging.getLogger(__name__)

POLICIES = ("archive", "prune", "off")
FINAL = ("completed", "failed")


@dataclass(frozen=True)
class RetentionPolicy:
    days: float = 30.0
    policy: str = "archive"

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        t = section(settings, "retention")
        days = t.get("days", 30)
        policy = t.get("policy", "archive")
        if isinstance(days, bool) or not isinstance(days, int | float) or days < 1:
            raise ConfigError("carapace.toml: retention.days must be a number >= 1")
        if policy not in POLICIES:
            raise ConfigError(f"carapace.toml: retention.policy must be one of {POLICIES}")
        return cls(float(days), str(policy))


@dataclass
class SessionCompaction:
    session_id: str
    inbound: int = 0
    acks: int = 0
    outbound: int = 0
    delivered: int = 0
    transcript: bool = False
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Archive:
    """The archive files a compaction appends to, each append made durable before the
    delete that follows it commits (a crash between them keeps the rows twice, never
    none), and taken back when that commit fails (an agent's lock: the rows stay in the
    session's file and the next pass archives them again, once)."""

    def __init__(self, home: Home, ag: str, sid: str, now: datetime) -> None:
        self.dir = home.root / "archive" / ag / sid
        self.now = now
        self._sizes: list[tuple[Path, int | None]] = []  # (file, its size before: None new)

    def add(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.append(table, ((json.dumps(r, ensure_ascii=False, default=str) + "\n").encode()
                                for r in rows))  # fmt: skip

    def append(self, name: str, chunks: Iterable[bytes]) -> None:
        """``chunks`` as a gzip member of its own at the end of today's ``name`` file,
        synced to disk."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / f"{self.now:%Y%m%d}-{name}.jsonl.gz"
        try:
            before: int | None = os.stat(path).st_size
        except FileNotFoundError:
            before = None
        self._sizes.append((path, before))
        with open(path, "ab") as raw:
            with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
                for chunk in chunks:
                    gz.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        if before is None:
            _sync_dir(self.dir)

    def undo(self) -> None:
        for path, before in reversed(self._sizes):
            try:
                if before is None:
                    path.unlink()
                else:
                    os.truncate(path, before)
            except OSError as exc:  # the rows stay archived twice: said, not fatal
                logger.warning("retention: could not take back %s (%s)", path, exc)
        self._sizes.clear()

    def done(self) -> None:
        self._sizes.clear()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _archiving(home: Home, ag: str, sid: str, now: datetime) -> Iterator[_Archive]:
    """An :class:`_Archive` whose appends are taken back when the block (its commit) fails."""
    archive = _Archive(home, ag, sid, now)
    try:
        yield archive
    except BaseException:
        archive.undo()
        raise
    archive.done()


def _safe_outbound(conn: sqlite3.Connection) -> bool:
    q = "SELECT COUNT(*) FROM sqlite_master WHERE type IN ('trigger', 'view')"
    return int(conn.execute(q).fetchone()[0]) == 0


def compact_session(home: Home, agent_group_id: str, session_id: str, folder: str | None,
                    *, policy: RetentionPolicy, now: datetime, runner_running: bool,
                    last_active: str | None = None,
                    pending_out: frozenset[str] = frozenset()) -> SessionCompaction:  # fmt: skip
    rep = SessionCompaction(session_id)
    if policy.policy == "off":
        return rep
    keep = policy.policy == "archive"
    cutoff = sqlite_ts(now - timedelta(days=policy.days))
    paths = SessionPaths.of(home.data_dir, agent_group_id, session_id)
    if not paths.inbound.is_file() or paths.inbound.is_symlink():
        rep.skipped.append("no inbound.db")
        return rep
    # a commit waits at most COMMIT_WAIT_MS for a reader (the agent may keep the file
    # locked): the session is skipped this pass, not waited for (compact_home)
    inb = connect(paths.inbound, "session", commit_wait_ms=COMMIT_WAIT_MS)
    try:
        with _archiving(home, agent_group_id, session_id, now) as archive, transaction(inb):
            rows = [dict(r) for r in inb.execute(
                "SELECT * FROM messages_in m WHERE status IN ('completed', 'failed') "
                "AND recurrence IS NULL AND timestamp < ? "
                "AND seq < (SELECT MAX(seq) FROM messages_in) AND (kind != 'task' OR "
                "seq < (SELECT MAX(seq) FROM messages_in s WHERE s.series_id = m.series_id))",
                (cutoff,),
            )]  # fmt: skip
            if keep:
                archive.add("messages_in", rows)
            inb.executemany("DELETE FROM messages_in WHERE id=?", [(r["id"],) for r in rows])
            rep.inbound = len(rows)
        remaining_in = {r[0] for r in inb.execute("SELECT id FROM messages_in")}
        if runner_running:
            rep.skipped.append("runner running: outbound.db left alone")
        elif paths.outbound.is_file() and not paths.outbound.is_symlink():
            _compact_outbound(home, agent_group_id, session_id, paths, inb, remaining_in,
                              cutoff, keep, now, pending_out, rep)  # fmt: skip
        if not runner_running:
            out_ids = _outbound_ids(paths)
            if out_ids is not None:
                with _archiving(home, agent_group_id, session_id, now) as archive, transaction(inb):
                    rows = [dict(r) for r in inb.execute(
                        "SELECT * FROM delivered WHERE delivered_at < ?", (cutoff,)
                    ) if r["message_out_id"] not in out_ids]  # fmt: skip
                    if keep:
                        archive.add("delivered", rows)
                    inb.executemany("DELETE FROM delivered WHERE message_out_id=?",
                                    [(r["message_out_id"],) for r in rows])  # fmt: skip
                    rep.delivered = len(rows)
    finally:
        inb.close()
    if folder and not runner_running and (last_active is None or last_active < cutoff):
        rep.transcript = _transcript(home, folder, agent_group_id, session_id, now, policy, keep)
    return rep


def _outbound_ids(paths: SessionPaths) -> set[str] | None:
    if not paths.outbound.is_file() or paths.outbound.is_symlink():
        return None
    out = connect(paths.outbound, "session", readonly=True)
    try:
        return {str(r[0]) for r in out.execute("SELECT id FROM messages_out")}
    except sqlite3.Error:
        return None
    finally:
        out.close()


def _compact_outbound(home: Home, ag: str, sid: str, paths: SessionPaths,
                      inb: sqlite3.Connection, remaining_in: set[str], cutoff: str, keep: bool,
                      now: datetime, pending_out: frozenset[str],
                      rep: SessionCompaction) -> None:  # fmt: skip
    delivered = {str(r[0]) for r in inb.execute("SELECT message_out_id FROM delivered")}
    out = connect(paths.outbound, "session")
    try:
        out.execute("PRAGMA trusted_schema = OFF")
        if not _safe_outbound(out):
            rep.skipped.append("outbound.db has triggers or views: left alone")
            return
        with _archiving(home, ag, sid, now) as archive, transaction(out):
            acks = [dict(r) for r in out.execute(
                "SELECT * FROM processing_ack WHERE status IN ('completed', 'failed') "
                "AND status_changed < ?", (cutoff,)
            ) if r["message_id"] not in remaining_in]  # fmt: skip
            top = out.execute("SELECT MAX(seq) FROM messages_out").fetchone()[0]
            msgs = [dict(r) for r in out.execute(
                "SELECT * FROM messages_out WHERE recurrence IS NULL AND timestamp < ? "
                "AND seq < ?", (cutoff, top if top is not None else 0)
            ) if r["id"] in delivered and r["id"] not in pending_out]  # fmt: skip
            if keep:
                archive.add("processing_ack", acks)
                archive.add("messages_out", msgs)
            out.executemany("DELETE FROM processing_ack WHERE message_id=?",
                            [(a["message_id"],) for a in acks])  # fmt: skip
            out.executemany("DELETE FROM messages_out WHERE id=?", [(m["id"],) for m in msgs])
            rep.acks, rep.outbound = len(acks), len(msgs)
    finally:
        out.close()


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _transcript(home: Home, folder: str, ag: str, sid: str, now: datetime,
                policy: RetentionPolicy, keep: bool) -> bool:  # fmt: skip
    """Archive/remove the session's transcript if it is a regular file idle long enough."""
    name = f"{sid}.jsonl"
    try:
        gfd = os.open(home.group_dir(folder), _DIR)
    except OSError:
        return False
    try:
        try:
            cfd = os.open("conversations", _DIR, dir_fd=gfd)
        except OSError:
            return False
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=cfd)
            except OSError:
                return False
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                age = now.timestamp() - st.st_mtime
                if not stat.S_ISREG(st.st_mode) or age < policy.days * 86400:
                    return False
                if not keep:
                    os.unlink(name, dir_fd=cfd)
                    return True
                with _archiving(home, ag, sid, now) as archive:  # (taken back if the
                    archive.append("transcript", iter(lambda: fh.read(1 << 20), b""))
                    os.unlink(name, dir_fd=cfd)  # transcript cannot be removed)
            return True
        finally:
            os.close(cfd)
    finally:
        os.close(gfd)


def compact_home(home: Home, db: sqlite3.Connection, policy: RetentionPolicy, *,
                 now: datetime | None = None, running: set[str] | None = None,
                 session_id: str | None = None) -> list[SessionCompaction]:  # fmt: skip
    """Compact every session (or one). ``running``: sessions whose runner is alive (default:
    ``container_status = 'running'`` in the central DB)."""
    when = now or datetime.now(UTC)
    q = ("SELECT s.id, s.agent_group_id, s.container_status, s.last_active, g.folder "
         "FROM sessions s LEFT JOIN agent_groups g ON g.id = s.agent_group_id")  # fmt: skip
    args: tuple[Any, ...] = ()
    if session_id is not None:
        q += " WHERE s.id = ?"
        args = (session_id,)
    out = []
    for r in db.execute(q + " ORDER BY s.id", args).fetchall():
        pending = frozenset(
            str(x[0]) for x in db.execute(
                "SELECT message_out_id FROM pending_questions WHERE session_id=?", (r[0],))
        )  # fmt: skip
        live = r[0] in running if running is not None else r[2] == "running"
        try:
            out.append(compact_session(
                home, str(r[1]), str(r[0]), r[4], policy=policy, now=when,
                runner_running=live, last_active=r[3], pending_out=pending,
            ))  # fmt: skip
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            logger.warning("retention: session %s skipped, its inbound.db is locked (%s); "
                           "tried again at the next pass", r[0], exc)  # fmt: skip
            skipped = SessionCompaction(str(r[0]))
            skipped.skipped.append("inbound.db locked by a reader: tried again next pass")
            out.append(skipped)
    return out


def sizes(home: Home) -> dict[str, int]:
    """Bytes on disk: central DB (with -wal), session folders' DBs, group folders, archive."""

    def du(p: Path) -> int:
        total = 0
        for root, _dirs, files in os.walk(p, followlinks=False):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total

    central = sum(
        os.lstat(p).st_size for p in (home.central_db, Path(f"{home.central_db}-wal"))
        if p.exists()
    )  # fmt: skip
    return {
        "central_db": central,
        "sessions": du(home.sessions_dir),
        "groups": du(home.groups_dir),
        "archive": du(home.root / "archive"),
    }
