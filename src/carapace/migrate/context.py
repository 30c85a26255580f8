"""State shared by the import steps: the v1 source, the target home, the ledger, the report."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime

from carapace.config import Home
from carapace.db import sessions
from carapace.db.session import SessionPaths, init_session_folder, open_inbound
from carapace.migrate.mapping import Chat
from carapace.migrate.report import Report
from carapace.migrate.v1source import V1Source
from carapace.timefmt import iso


@dataclass(frozen=True)
class Wired:
    """A v1 registered group as imported: its agent group and (when mapped) chat."""

    jid: str
    folder: str
    agent_group_id: str
    chat: Chat | None
    messaging_group_id: str | None


@dataclass
class ImportContext:
    src: V1Source
    home: Home  # where DB rows and session folders are written
    conn: sqlite3.Connection
    report: Report
    now: datetime
    timezone: str  # carapace's scheduling zone
    v1_timezone: str
    write_files: bool = True  # False in a dry run: group files are only counted
    files_home: Home | None = None  # where existing group files are looked for
    imported: list[Wired] = field(default_factory=list)
    folders: dict[str, str] = field(default_factory=dict)  # v1 folder -> agent group id

    @property
    def file_root(self) -> Home:
        return self.files_home or self.home

    # -- the ledger (carapace_v1_imports) ---------------------------------------

    def ledger(self, table: str, key: str, kind: str) -> tuple[bool, str | None]:
        row = self.conn.execute(
            "SELECT target_id FROM carapace_v1_imports WHERE source_table=? AND source_key=? "
            "AND target_kind=?",
            (table, key, kind),
        ).fetchone()
        return (row is not None, row[0] if row is not None else None)

    def record(self, table: str, key: str, kind: str, target: str | None) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO carapace_v1_imports (source_table, source_key, target_kind, "
            "target_id, imported_at) VALUES (?, ?, ?, ?, ?)",
            (table, key, kind, target, iso(self.now)),
        )

    # -- sessions ---------------------------------------------------------------

    def session_for(self, agent_group_id: str, mg_id: str, chat: Chat) -> tuple[str, bool]:
        """The active shared session of (agent, chat), created with its folder if missing."""
        s = sessions.find_session(self.conn, agent_group_id, mg_id, None)
        created = s is None
        if s is None:
            s = sessions.create_session(self.conn, agent_group_id, mg_id, None, now=self.now)
        paths = SessionPaths.of(self.home.data_dir, agent_group_id, s.id)
        if created or not paths.inbound.exists():
            init_session_folder(paths)
            conn = open_inbound(paths)
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO session_routing (id, channel_type, platform_id, "
                    "thread_id) VALUES (1, ?, ?, NULL)",
                    (chat.channel_type, chat.platform_id),
                )
            finally:
                conn.close()
        return s.id, created

    def paths(self, agent_group_id: str, session_id: str) -> SessionPaths:
        return SessionPaths.of(self.home.data_dir, agent_group_id, session_id)
