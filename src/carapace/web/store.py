"""``data/web.db``: the web server's own file (login links, browser sessions, the web chat's
messages and files, webhook replies, seen webhook signatures).

Kept out of ``data/v2.db`` so the central schema stays NanoClaw's. Secrets are stored only
as SHA-256 hashes (login tokens, session ids); the CSRF token is per browser session.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from carapace.config import Home
from carapace.db.connection import connect, transaction
from carapace.jsonutil import dumps, loads_or
from carapace.timefmt import iso

LOGIN_LINK_TTL_S = 15 * 60
MAX_FILE_BYTES = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_links (
  token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL, used_at TEXT);
CREATE TABLE IF NOT EXISTS browser_sessions (
  id_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, csrf TEXT NOT NULL,
  created_at TEXT NOT NULL, expires_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT, platform_id TEXT NOT NULL, direction TEXT NOT NULL,
  kind TEXT NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL,
  message_out_id TEXT, in_reply_to TEXT, event_id TEXT, routed INTEGER);
CREATE INDEX IF NOT EXISTS idx_web_messages_chat ON messages(platform_id, id);
CREATE TABLE IF NOT EXISTS files (
  id INTEGER PRIMARY KEY AUTOINCREMENT, message_id INTEGER NOT NULL, name TEXT NOT NULL,
  data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS idx_web_files_msg ON files(message_id);
CREATE TABLE IF NOT EXISTS seen_signatures (sig TEXT PRIMARY KEY, seen_at TEXT NOT NULL);
"""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def web_db_path(home: Home) -> Path:
    return home.data_dir / "web.db"


@dataclass(frozen=True)
class BrowserSession:
    user_id: str
    csrf: str
    expires_at: str


@dataclass(frozen=True)
class StoredMessage:
    id: int
    platform_id: str
    direction: str  # in | out
    kind: str
    content: Any
    created_at: str
    message_out_id: str | None
    in_reply_to: str | None
    files: list[tuple[int, str]]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "chat": self.platform_id, "direction": self.direction,
                "kind": self.kind, "content": self.content, "at": self.created_at,
                "message_out_id": self.message_out_id, "in_reply_to": self.in_reply_to,
                "files": [{"id": i, "name": n} for i, n in self.files]}  # fmt: skip


class WebStore:
    """One connection to ``data/web.db`` (used from one thread: the host's loop, or the CLI)."""

    def __init__(self, path: Path, *, check_same_thread: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = connect(path, "central", check_same_thread=check_same_thread)
        self.db.executescript(_SCHEMA)

    @classmethod
    def open(cls, home: Home, *, check_same_thread: bool = True) -> WebStore:
        return cls(web_db_path(home), check_same_thread=check_same_thread)

    def close(self) -> None:
        self.db.close()

    # -- login links and browser sessions -----------------------------------------------------
    def purge_expired(self, now: datetime) -> int:
        """Drop login links and browser sessions past their expiry (used links go with
        them); called whenever a link is made or used. Returns the rows dropped."""
        t = iso(now)
        n = self.db.execute("DELETE FROM login_links WHERE expires_at <= ?", (t,)).rowcount
        n += self.db.execute("DELETE FROM browser_sessions WHERE expires_at <= ?", (t,)).rowcount
        return int(n)

    def create_login_link(self, user_id: str, now: datetime) -> str:
        self.purge_expired(now)
        token = secrets.token_urlsafe(32)
        expires = now + timedelta(seconds=LOGIN_LINK_TTL_S)
        self.db.execute(
            "INSERT INTO login_links (token_hash, user_id, created_at, expires_at) "
            "VALUES (?,?,?,?)",
            (_hash(token), user_id, iso(now), iso(expires)),
        )
        return token

    def peek_login_link(self, token: str, now: datetime) -> str | None:
        """The user a still-valid, unused link belongs to (the link is not used up)."""
        row = self.db.execute(
            "SELECT user_id FROM login_links WHERE token_hash=? AND used_at IS NULL "
            "AND expires_at > ?",
            (_hash(token), iso(now)),
        ).fetchone()
        return str(row[0]) if row else None

    def use_login_link(self, token: str, now: datetime, days: float) -> tuple[str, str] | None:
        """Use the link up (once) and open a browser session: ``(session id, user id)``."""
        with transaction(self.db):
            self.purge_expired(now)
            user_id = self.peek_login_link(token, now)
            if user_id is None:
                return None
            self.db.execute(
                "UPDATE login_links SET used_at=? WHERE token_hash=?", (iso(now), _hash(token))
            )
            sid = secrets.token_urlsafe(32)
            self.db.execute(
                "INSERT INTO browser_sessions (id_hash, user_id, csrf, created_at, expires_at) "
                "VALUES (?,?,?,?,?)",
                (_hash(sid), user_id, secrets.token_urlsafe(32), iso(now),
                 iso(now + timedelta(days=days))),
            )  # fmt: skip
        return sid, user_id

    def browser_session(self, sid: str | None, now: datetime) -> BrowserSession | None:
        if not sid or len(sid) > 200:
            return None
        row = self.db.execute(
            "SELECT user_id, csrf, expires_at FROM browser_sessions WHERE id_hash=? "
            "AND expires_at > ?",
            (_hash(sid), iso(now)),
        ).fetchone()
        return BrowserSession(str(row[0]), str(row[1]), str(row[2])) if row else None

    def end_browser_session(self, sid: str) -> None:
        self.db.execute("DELETE FROM browser_sessions WHERE id_hash=?", (_hash(sid),))

    # -- chat messages --------------------------------------------------------------------------
    def add_message(
        self, platform_id: str, direction: str, kind: str, content: Any, now: datetime, *,
        message_out_id: str | None = None, in_reply_to: str | None = None,
        event_id: str | None = None, files: tuple[tuple[str, bytes], ...] = (),
    ) -> StoredMessage:  # fmt: skip
        with transaction(self.db):
            cur = self.db.execute(
                "INSERT INTO messages (platform_id, direction, kind, content, created_at, "
                "message_out_id, in_reply_to, event_id, routed) VALUES (?,?,?,?,?,?,?,?,?)",
                (platform_id, direction, kind, dumps(content), iso(now), message_out_id,
                 in_reply_to, event_id, 0 if direction == "in" else None),
            )  # fmt: skip
            mid = int(cur.lastrowid or 0)
            stored: list[tuple[int, str]] = []
            for name, data in files:
                c = self.db.execute(
                    "INSERT INTO files (message_id, name, data) VALUES (?,?,?)", (mid, name, data)
                )
                stored.append((int(c.lastrowid or 0), name))
        return StoredMessage(mid, platform_id, direction, kind, content, iso(now),
                             message_out_id, in_reply_to, stored)  # fmt: skip

    def mark_routed(self, mid: int) -> None:
        self.db.execute("UPDATE messages SET routed=1 WHERE id=?", (mid,))

    def unrouted(self, limit: int = 500) -> list[tuple[StoredMessage, str]]:
        """Messages typed in a page whose routing never finished (the host died between
        storing and committing), oldest first, with their event ids."""
        rows = self.db.execute(
            "SELECT * FROM messages WHERE direction='in' AND routed=0 ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [(self._msg(r), str(r["event_id"] or "")) for r in rows]

    def files_of(self, mid: int) -> list[tuple[str, bytes]]:
        return [(str(r[0]), bytes(r[1])) for r in self.db.execute(
            "SELECT name, data FROM files WHERE message_id=? ORDER BY id", (mid,))]  # fmt: skip

    def find_out(self, message_out_id: str, platform_id: str | None = None) -> StoredMessage | None:
        """The first reply stored for ``message_out_id`` (in ``platform_id``'s chat)."""
        row = self.db.execute(
            "SELECT * FROM messages WHERE message_out_id=? AND direction='out' "
            "AND (? IS NULL OR platform_id=?) ORDER BY id LIMIT 1",
            (message_out_id, platform_id, platform_id),
        ).fetchone()
        return self._msg(row) if row else None

    def get_message(self, mid: int) -> StoredMessage | None:
        row = self.db.execute("SELECT * FROM messages WHERE id=?", (mid,)).fetchone()
        return self._msg(row) if row else None

    def update_content(self, mid: int, content: Any) -> None:
        self.db.execute("UPDATE messages SET content=? WHERE id=?", (dumps(content), mid))

    def history(
        self, platform_id: str, *, after: int = 0, before: int | None = None, limit: int = 100
    ) -> list[StoredMessage]:
        if before is not None:
            rows = self.db.execute(
                "SELECT * FROM messages WHERE platform_id=? AND id<? ORDER BY id DESC LIMIT ?",
                (platform_id, before, limit),
            ).fetchall()
            rows.reverse()
        elif after:
            rows = self.db.execute(
                "SELECT * FROM messages WHERE platform_id=? AND id>? ORDER BY id LIMIT ?",
                (platform_id, after, limit),
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM messages WHERE platform_id=? ORDER BY id DESC LIMIT ?",
                (platform_id, limit),
            ).fetchall()
            rows.reverse()
        return [self._msg(r) for r in rows]

    def file(self, file_id: int) -> tuple[str, str, bytes] | None:
        """``(platform id, name, data)`` of a stored file."""
        row = self.db.execute(
            "SELECT m.platform_id, f.name, f.data FROM files f JOIN messages m "
            "ON m.id = f.message_id WHERE f.id=?",
            (file_id,),
        ).fetchone()
        return (str(row[0]), str(row[1]), bytes(row[2])) if row else None

    def _msg(self, row: sqlite3.Row) -> StoredMessage:
        files = [(int(r[0]), str(r[1])) for r in self.db.execute(
            "SELECT id, name FROM files WHERE message_id=? ORDER BY id", (row["id"],))]  # fmt: skip
        return StoredMessage(int(row["id"]), row["platform_id"], row["direction"], row["kind"],
                             loads_or(row["content"], row["content"]), row["created_at"],
                             row["message_out_id"], row["in_reply_to"], files)  # fmt: skip

    # -- webhook replay protection ----------------------------------------------------------------
    def remember_signature(self, sig: str, now: datetime, window_s: float) -> bool:
        """False when ``sig`` was seen within the window (a replay)."""
        cutoff = iso(now - timedelta(seconds=2 * window_s))
        with transaction(self.db):
            self.db.execute("DELETE FROM seen_signatures WHERE seen_at < ?", (cutoff,))
            cur = self.db.execute(
                "INSERT OR IGNORE INTO seen_signatures (sig, seen_at) VALUES (?,?)", (sig, iso(now))
            )
        return cur.rowcount == 1
