"""Reading a NanoClaw v1 install, read-only, at any schema age (spec/v1-migration.md §1).

v1 added columns with ad-hoc ``ALTER``s at start-up, so a DB may lack any column added after
it was created (§1.3). Every reader selects ``*`` and fills a missing column with v1's own
default (``requires_trigger`` 1, ``is_main`` 0 — or ``folder = 'main'`` as v1's backfill did —
``context_mode`` ``'isolated'``, ``script`` NULL, ``is_bot_message`` 0). Nothing is written
to the v1 folder.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carapace.errors import ConfigError


@dataclass(frozen=True)
class V1Group:
    jid: str
    name: str
    folder: str
    trigger_pattern: str | None
    added_at: str | None
    container_config: str | None
    requires_trigger: Any
    is_main: Any


@dataclass(frozen=True)
class V1Task:
    id: str
    group_folder: str
    chat_jid: str
    prompt: str
    schedule_type: str
    schedule_value: str
    next_run: str | None
    last_run: str | None
    last_result: str | None
    status: str | None
    created_at: str | None
    context_mode: str | None
    script: str | None


@dataclass(frozen=True)
class V1RunLog:
    id: int
    task_id: str
    run_at: str
    duration_ms: int | None
    status: str
    result: str | None
    error: str | None


@dataclass
class V1Source:
    """An open v1 install: its root (may be None when given a bare DB) and DB connection."""

    db_path: Path
    root: Path | None
    conn: sqlite3.Connection
    env: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self.conn.close()

    # -- tables ----------------------------------------------------------------

    def has_table(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return row is not None

    def columns(self, table: str) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def _rows(self, table: str, order: str = "rowid") -> list[dict[str, Any]]:
        if not self.has_table(table):
            return []
        cur = self.conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def groups(self) -> list[V1Group]:
        cols = self.columns("registered_groups")
        out = []
        for r in self._rows("registered_groups"):
            folder = str(r["folder"])
            # without the column, v1's backfill rule: is_main=1 where folder='main'
            is_main = r["is_main"] if "is_main" in cols else int(folder == "main")
            out.append(
                V1Group(
                    jid=str(r["jid"]),
                    name=str(r.get("name") or ""),
                    folder=folder,
                    trigger_pattern=r.get("trigger_pattern"),
                    added_at=r.get("added_at"),
                    container_config=r.get("container_config"),
                    requires_trigger=r["requires_trigger"] if "requires_trigger" in cols else 1,
                    is_main=is_main,
                )
            )
        return out

    def tasks(self) -> list[V1Task]:
        cols = self.columns("scheduled_tasks")
        out = []
        for r in self._rows("scheduled_tasks"):
            out.append(
                V1Task(
                    id=str(r["id"]),
                    group_folder=str(r.get("group_folder") or ""),
                    chat_jid=str(r.get("chat_jid") or ""),
                    prompt=str(r.get("prompt") or ""),
                    schedule_type=str(r.get("schedule_type") or ""),
                    schedule_value=str(r.get("schedule_value") or ""),
                    next_run=r.get("next_run"),
                    last_run=r.get("last_run"),
                    last_result=r.get("last_result"),
                    status=r.get("status"),
                    created_at=r.get("created_at"),
                    context_mode=r.get("context_mode") if "context_mode" in cols else "isolated",
                    script=(r.get("script") or None) if "script" in cols else None,
                )
            )
        return out

    def run_logs(self) -> list[V1RunLog]:
        return [
            V1RunLog(
                int(r["id"]),
                str(r["task_id"]),
                str(r["run_at"]),
                r.get("duration_ms"),
                str(r.get("status") or ""),
                r.get("result"),
                r.get("error"),
            )
            for r in self._rows("task_run_logs", "id")
        ]

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message row with all v1 columns present (missing ones as None / 0)."""
        if not self.has_table("messages"):
            return
        cur = self.conn.execute("SELECT * FROM messages ORDER BY chat_jid, timestamp, rowid")
        names = [d[0] for d in cur.description]
        for r in cur:
            row = dict(zip(names, r, strict=True))
            row.setdefault("sender_name", None)
            row.setdefault("is_bot_message", 0)
            for k in ("reply_to_message_id", "reply_to_message_content", "reply_to_sender_name"):
                row.setdefault(k, None)
            yield row

    def sessions(self) -> dict[str, str]:
        return {str(r["group_folder"]): str(r["session_id"]) for r in self._rows("sessions")}

    def chats(self) -> list[dict[str, Any]]:
        return [r for r in self._rows("chats") if r.get("jid") != "__group_sync__"]

    def router_state(self) -> dict[str, str]:
        return {str(r["key"]): str(r["value"]) for r in self._rows("router_state")}

    def count(self, table: str) -> int:
        if not self.has_table(table):
            return 0
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # -- files -----------------------------------------------------------------

    def group_dir(self, folder: str) -> Path | None:
        return self.root / "groups" / folder if self.root else None

    def claude_dir(self, folder: str) -> Path | None:
        return self.root / "data" / "sessions" / folder / ".claude" if self.root else None


def parse_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` (quotes stripped; comments and junk ignored)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or "=" not in s[1:]:
            continue
        key, value = s.split("=", 1)
        key = key.strip()
        if not key.replace("_", "").isalnum() or key[0].isdigit():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def locate(source: Path) -> tuple[Path, Path | None]:
    """(db path, install root or None) for a v1 folder or its ``messages.db``."""
    src = source.expanduser()
    if src.is_dir():
        for candidate in (src / "store" / "messages.db", src / "messages.db"):
            if candidate.is_file():
                return candidate, src
        raise ConfigError(f"{src} is not a NanoClaw v1 install (no store/messages.db)")
    if src.is_file():
        parent = src.parent
        root = parent.parent if parent.name == "store" else None
        return src, root
    raise ConfigError(f"{src} does not exist")


def open_v1(source: Path) -> V1Source:
    """Open a v1 install read-only; refuses anything without ``registered_groups``."""
    db_path, root = locate(source)
    uri = f"file:{db_path.resolve().as_posix()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        try:  # e.g. a WAL file we may not create -shm for: read the main file as is
            conn = sqlite3.connect(
                f"file:{db_path.resolve().as_posix()}?immutable=1", uri=True, isolation_level=None
            )
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read {db_path} as SQLite: {exc}")
    src = V1Source(db_path, root, conn)
    if not src.has_table("registered_groups"):
        conn.close()
        hint = ""
        if root and (root / "data" / "registered_groups.json").exists():
            hint = " (it still keeps groups in data/registered_groups.json: start v1 once)"
        raise ConfigError(f"{db_path} is not a NanoClaw v1 DB: no registered_groups table{hint}")
    if root is not None:
        src.env = parse_env(root / ".env")
    return src
