"""NanoClaw v1 installs of several schema ages, built in tests (spec/v1-migration.md §1.2–1.3).

A v1 install is a folder with ``store/messages.db``, ``groups/<folder>/``, ``data/sessions/``
and ``.env``. The DB's columns depend on which v1 builds ran on it, because v1 only added
columns with ad-hoc ``ALTER``s at start-up. :data:`AGES` names the shapes worth testing:

* ``final`` — created by the last v1 (v1.2.53): every column, ALTER-added ones last.
* ``2026-02-20`` — ``requires_trigger`` in CREATE, no ``is_main``, no ``script``, no reply
  columns (never ran a post-03-03 build).
* ``2026-02-05`` — created before 02-07 and then upgraded straight past 02-11: no
  ``requires_trigger``, no ``sender_name``, no ``is_main``, no ``is_bot_message`` (the gap
  spec §1.3 describes; NanoClaw's own migration crashes on it).
* ``2026-01-30`` — the oldest SQLite shape: no ``context_mode``/``script`` either.

The ``add_*`` helpers write only the columns the DB has, so one test body can run on every age.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AGES = ("final", "2026-02-20", "2026-02-05", "2026-01-30")

_CHATS = {
    "final": "jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT, channel TEXT, "
    "is_group INTEGER DEFAULT 0",
    "2026-02-20": "jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT, channel TEXT, "
    "is_group INTEGER DEFAULT 0",
    "2026-02-05": "jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT",
    "2026-01-30": "jid TEXT PRIMARY KEY, name TEXT, last_message_time TEXT",
}
_MESSAGES = {
    "final": "id TEXT, chat_jid TEXT, sender TEXT, sender_name TEXT, content TEXT, "
    "timestamp TEXT, is_from_me INTEGER, is_bot_message INTEGER DEFAULT 0, "
    "reply_to_message_id TEXT, reply_to_message_content TEXT, reply_to_sender_name TEXT",
    "2026-02-20": "id TEXT, chat_jid TEXT, sender TEXT, sender_name TEXT, content TEXT, "
    "timestamp TEXT, is_from_me INTEGER, is_bot_message INTEGER DEFAULT 0",
    "2026-02-05": "id TEXT, chat_jid TEXT, sender TEXT, content TEXT, timestamp TEXT, "
    "is_from_me INTEGER",
    "2026-01-30": "id TEXT, chat_jid TEXT, sender TEXT, content TEXT, timestamp TEXT, "
    "is_from_me INTEGER",
}
_TASKS_BASE = (
    "id TEXT PRIMARY KEY, group_folder TEXT NOT NULL, chat_jid TEXT NOT NULL, "
    "prompt TEXT NOT NULL, schedule_type TEXT NOT NULL, schedule_value TEXT NOT NULL, "
    "next_run TEXT, last_run TEXT, last_result TEXT, status TEXT DEFAULT 'active', "
    "created_at TEXT NOT NULL"
)
_TASKS = {
    "final": _TASKS_BASE + ", context_mode TEXT DEFAULT 'isolated', script TEXT",
    "2026-02-20": _TASKS_BASE + ", context_mode TEXT DEFAULT 'isolated'",
    "2026-02-05": _TASKS_BASE + ", context_mode TEXT DEFAULT 'isolated'",
    "2026-01-30": _TASKS_BASE,
}
_GROUPS_BASE = (
    "jid TEXT PRIMARY KEY, name TEXT NOT NULL, folder TEXT NOT NULL UNIQUE, "
    "trigger_pattern TEXT NOT NULL, added_at TEXT NOT NULL, container_config TEXT"
)
_GROUPS = {
    "final": _GROUPS_BASE + ", requires_trigger INTEGER DEFAULT 1, is_main INTEGER DEFAULT 0",
    "2026-02-20": _GROUPS_BASE + ", requires_trigger INTEGER DEFAULT 1",
    "2026-02-05": _GROUPS_BASE,
    "2026-01-30": _GROUPS_BASE,
}


def v1_schema(age: str = "final") -> str:
    """The DDL of a v1 ``messages.db`` of the given age."""
    if age not in AGES:
        raise ValueError(f"unknown v1 schema age {age!r}; one of {', '.join(AGES)}")
    return f"""
CREATE TABLE chats ({_CHATS[age]});
CREATE TABLE messages ({_MESSAGES[age]}, PRIMARY KEY (id, chat_jid),
  FOREIGN KEY (chat_jid) REFERENCES chats(jid));
CREATE INDEX idx_timestamp ON messages(timestamp);
CREATE TABLE scheduled_tasks ({_TASKS[age]});
CREATE INDEX idx_next_run ON scheduled_tasks(next_run);
CREATE INDEX idx_status ON scheduled_tasks(status);
CREATE TABLE task_run_logs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  task_id TEXT NOT NULL REFERENCES scheduled_tasks(id),
  run_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, status TEXT NOT NULL,
  result TEXT, error TEXT);
CREATE INDEX idx_task_run_logs ON task_run_logs(task_id, run_at);
CREATE TABLE router_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (group_folder TEXT PRIMARY KEY, session_id TEXT NOT NULL);
CREATE TABLE registered_groups ({_GROUPS[age]});
"""


def create_v1_db(path: Path, age: str = "final") -> sqlite3.Connection:
    """Create a v1 DB of the given age (foreign keys off, as Python leaves them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.executescript(v1_schema(age))
    return conn


def _insert(conn: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
    cols = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    row = {k: v for k, v in values.items() if k in cols}
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))


def add_group(
    conn: sqlite3.Connection,
    jid: str,
    name: str,
    folder: str,
    trigger: str = "@Andy",
    *,
    requires_trigger: int | None = 1,
    is_main: int | None = 0,
    container_config: str | None = None,
    added_at: str = "2026-01-15T10:00:00.000Z",
) -> None:
    _insert(
        conn,
        "registered_groups",
        {
            "jid": jid, "name": name, "folder": folder, "trigger_pattern": trigger,
            "added_at": added_at, "container_config": container_config,
            "requires_trigger": requires_trigger, "is_main": is_main,
        },
    )  # fmt: skip


def add_task(
    conn: sqlite3.Connection,
    id: str,
    folder: str,
    chat_jid: str,
    prompt: str = "Daily summary",
    schedule_type: str = "cron",
    schedule_value: str = "0 9 * * *",
    *,
    next_run: str | None = "2026-06-01T07:00:00.000Z",
    status: str = "active",
    context_mode: str | None = "isolated",
    script: str | None = None,
    last_run: str | None = None,
    last_result: str | None = None,
    created_at: str = "2026-01-20T10:00:00.000Z",
) -> None:
    _insert(
        conn,
        "scheduled_tasks",
        {
            "id": id, "group_folder": folder, "chat_jid": chat_jid, "prompt": prompt,
            "schedule_type": schedule_type, "schedule_value": schedule_value,
            "next_run": next_run, "last_run": last_run, "last_result": last_result,
            "status": status, "created_at": created_at, "context_mode": context_mode,
            "script": script,
        },
    )  # fmt: skip


def add_run_log(
    conn: sqlite3.Connection,
    task_id: str,
    run_at: str,
    *,
    duration_ms: int = 1200,
    status: str = "success",
    result: str | None = "done",
    error: str | None = None,
) -> None:
    _insert(
        conn,
        "task_run_logs",
        {
            "task_id": task_id, "run_at": run_at, "duration_ms": duration_ms,
            "status": status, "result": result, "error": error,
        },
    )  # fmt: skip


def add_chat(
    conn: sqlite3.Connection, jid: str, name: str | None = None, last: str = "2026-02-01"
) -> None:
    _insert(conn, "chats", {"jid": jid, "name": name or jid, "last_message_time": last})


def add_message(
    conn: sqlite3.Connection,
    chat_jid: str,
    id: str,
    content: str,
    *,
    sender: str = "15551234567@s.whatsapp.net",
    sender_name: str | None = "Alice",
    timestamp: str = "2026-02-01T10:00:00.000Z",
    is_from_me: int = 0,
    is_bot_message: int = 0,
) -> None:
    _insert(
        conn,
        "messages",
        {
            "id": id, "chat_jid": chat_jid, "sender": sender, "sender_name": sender_name,
            "content": content, "timestamp": timestamp, "is_from_me": is_from_me,
            "is_bot_message": is_bot_message,
        },
    )  # fmt: skip


def set_session(conn: sqlite3.Connection, folder: str, session_id: str) -> None:
    conn.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (folder, session_id))


def set_router_state(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO router_state VALUES (?, ?)", (key, value))


@dataclass(frozen=True)
class V1Tree:
    """A v1 install folder made in a test."""

    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "store" / "messages.db"

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.db_path), isolation_level=None)

    def group_file(self, folder: str, name: str, text: str) -> Path:
        path = self.root / "groups" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def transcript(self, folder: str, uuid: str, text: str = '{"type":"user"}\n') -> Path:
        path = (
            self.root / "data" / "sessions" / folder / ".claude" / "projects"
            / "-workspace-group" / f"{uuid}.jsonl"
        )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def env(self, text: str) -> None:
        (self.root / ".env").write_text(text, encoding="utf-8")


def make_v1_tree(root: Path, age: str = "final") -> V1Tree:
    """An empty v1 install (schema of ``age``) at ``root``."""
    (root / "groups").mkdir(parents=True, exist_ok=True)
    create_v1_db(root / "store" / "messages.db", age).close()
    return V1Tree(root)


# ------------------------------------------------------------------ NanoClaw v2 homes

#: NanoClaw v2's central schema after its 13 migrations (spec/host.md §1.2), as its own
#: migration runner leaves it — including the nullable engage columns.
NANOCLAW_V2_SCHEMA = """
CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
  applied TEXT NOT NULL);
CREATE UNIQUE INDEX idx_schema_version_name ON schema_version(name);
CREATE TABLE agent_groups (id TEXT PRIMARY KEY, name TEXT NOT NULL, folder TEXT NOT NULL UNIQUE,
  agent_provider TEXT, created_at TEXT NOT NULL);
CREATE TABLE messaging_groups (id TEXT PRIMARY KEY, channel_type TEXT NOT NULL,
  platform_id TEXT NOT NULL, name TEXT, is_group INTEGER DEFAULT 0,
  unknown_sender_policy TEXT NOT NULL DEFAULT 'strict', created_at TEXT NOT NULL,
  denied_at TEXT, UNIQUE(channel_type, platform_id));
CREATE TABLE messaging_group_agents (id TEXT PRIMARY KEY,
  messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id),
  agent_group_id TEXT NOT NULL REFERENCES agent_groups(id), session_mode TEXT DEFAULT 'shared',
  priority INTEGER DEFAULT 0, created_at TEXT NOT NULL, engage_mode TEXT, engage_pattern TEXT,
  sender_scope TEXT, ignored_message_policy TEXT, UNIQUE(messaging_group_id, agent_group_id));
CREATE TABLE users (id TEXT PRIMARY KEY, kind TEXT NOT NULL, display_name TEXT,
  created_at TEXT NOT NULL);
CREATE TABLE user_roles (user_id TEXT NOT NULL REFERENCES users(id), role TEXT NOT NULL,
  agent_group_id TEXT REFERENCES agent_groups(id), granted_by TEXT REFERENCES users(id),
  granted_at TEXT NOT NULL, PRIMARY KEY (user_id, role, agent_group_id));
CREATE INDEX idx_user_roles_scope ON user_roles(agent_group_id, role);
CREATE TABLE agent_group_members (user_id TEXT NOT NULL REFERENCES users(id),
  agent_group_id TEXT NOT NULL REFERENCES agent_groups(id), added_by TEXT REFERENCES users(id),
  added_at TEXT NOT NULL, PRIMARY KEY (user_id, agent_group_id));
CREATE TABLE user_dms (user_id TEXT NOT NULL REFERENCES users(id), channel_type TEXT NOT NULL,
  messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id), resolved_at TEXT NOT NULL,
  PRIMARY KEY (user_id, channel_type));
CREATE TABLE sessions (id TEXT PRIMARY KEY, agent_group_id TEXT NOT NULL
  REFERENCES agent_groups(id), messaging_group_id TEXT REFERENCES messaging_groups(id),
  thread_id TEXT, agent_provider TEXT, status TEXT DEFAULT 'active',
  container_status TEXT DEFAULT 'stopped', last_active TEXT, created_at TEXT NOT NULL);
CREATE INDEX idx_sessions_agent_group ON sessions(agent_group_id);
CREATE INDEX idx_sessions_lookup ON sessions(messaging_group_id, thread_id);
CREATE TABLE pending_questions (question_id TEXT PRIMARY KEY, session_id TEXT NOT NULL
  REFERENCES sessions(id), message_out_id TEXT NOT NULL, platform_id TEXT, channel_type TEXT,
  thread_id TEXT, title TEXT NOT NULL, options_json TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE chat_sdk_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER);
CREATE TABLE chat_sdk_subscriptions (thread_id TEXT PRIMARY KEY,
  subscribed_at TEXT NOT NULL DEFAULT (datetime('now')));
CREATE TABLE chat_sdk_locks (thread_id TEXT PRIMARY KEY, token TEXT NOT NULL,
  expires_at INTEGER NOT NULL);
CREATE TABLE chat_sdk_lists (key TEXT NOT NULL, idx INTEGER NOT NULL, value TEXT NOT NULL,
  expires_at INTEGER, PRIMARY KEY (key, idx));
CREATE TABLE pending_approvals (approval_id TEXT PRIMARY KEY, session_id TEXT
  REFERENCES sessions(id), request_id TEXT NOT NULL, action TEXT NOT NULL,
  payload TEXT NOT NULL, created_at TEXT NOT NULL, agent_group_id TEXT
  REFERENCES agent_groups(id), channel_type TEXT, platform_id TEXT, platform_message_id TEXT,
  expires_at TEXT, status TEXT NOT NULL DEFAULT 'pending', title TEXT NOT NULL DEFAULT '',
  options_json TEXT NOT NULL DEFAULT '[]');
CREATE INDEX idx_pending_approvals_action_status ON pending_approvals(action, status);
CREATE TABLE agent_destinations (agent_group_id TEXT NOT NULL REFERENCES agent_groups(id),
  local_name TEXT NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL,
  created_at TEXT NOT NULL, PRIMARY KEY (agent_group_id, local_name));
CREATE INDEX idx_agent_dest_target ON agent_destinations(target_type, target_id);
CREATE TABLE unregistered_senders (channel_type TEXT NOT NULL, platform_id TEXT NOT NULL,
  user_id TEXT, sender_name TEXT, reason TEXT NOT NULL, messaging_group_id TEXT,
  agent_group_id TEXT, message_count INTEGER NOT NULL DEFAULT 1, first_seen TEXT NOT NULL,
  last_seen TEXT NOT NULL, PRIMARY KEY (channel_type, platform_id));
CREATE INDEX idx_unregistered_senders_last_seen ON unregistered_senders(last_seen);
CREATE TABLE pending_sender_approvals (id TEXT PRIMARY KEY, messaging_group_id TEXT NOT NULL
  REFERENCES messaging_groups(id), agent_group_id TEXT NOT NULL REFERENCES agent_groups(id),
  sender_identity TEXT NOT NULL, sender_name TEXT, original_message TEXT NOT NULL,
  approver_user_id TEXT NOT NULL, created_at TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
  options_json TEXT NOT NULL DEFAULT '[]', UNIQUE(messaging_group_id, sender_identity));
CREATE INDEX idx_pending_sender_approvals_mg ON pending_sender_approvals(messaging_group_id);
CREATE TABLE pending_channel_approvals (messaging_group_id TEXT PRIMARY KEY
  REFERENCES messaging_groups(id), agent_group_id TEXT NOT NULL REFERENCES agent_groups(id),
  original_message TEXT NOT NULL, approver_user_id TEXT NOT NULL, created_at TEXT NOT NULL,
  title TEXT NOT NULL DEFAULT '', options_json TEXT NOT NULL DEFAULT '[]');
CREATE TABLE container_configs (agent_group_id TEXT PRIMARY KEY REFERENCES agent_groups(id)
  ON DELETE CASCADE, provider TEXT, model TEXT, effort TEXT, image_tag TEXT,
  assistant_name TEXT, max_messages_per_prompt INTEGER, skills TEXT NOT NULL DEFAULT '"all"',
  mcp_servers TEXT NOT NULL DEFAULT '{}', packages_apt TEXT NOT NULL DEFAULT '[]',
  packages_npm TEXT NOT NULL DEFAULT '[]', additional_mounts TEXT NOT NULL DEFAULT '[]',
  updated_at TEXT NOT NULL, cli_scope TEXT NOT NULL DEFAULT 'group');
"""

NANOCLAW_V2_MIGRATIONS = (
    "initial-v2-schema", "chat-sdk-state", "pending-approvals", "agent-destinations",
    "pending-approvals-title-options", "dropped-messages", "drop-pending-credentials",
    "engage-modes", "pending-sender-approvals", "channel-registration",
    "approval-render-metadata", "container-configs", "cli-scope",
)  # fmt: skip

#: An ``inbound.db`` from before NanoClaw added ``series_id``, ``trigger``,
#: ``source_session_id`` and ``on_wake`` (and ``delivered.platform_message_id``/``status``).
OLD_INBOUND_SCHEMA = """
CREATE TABLE messages_in (id TEXT PRIMARY KEY, seq INTEGER UNIQUE, kind TEXT NOT NULL,
  timestamp TEXT NOT NULL, status TEXT DEFAULT 'pending', process_after TEXT, recurrence TEXT,
  tries INTEGER DEFAULT 0, platform_id TEXT, channel_type TEXT, thread_id TEXT,
  content TEXT NOT NULL);
CREATE TABLE delivered (message_out_id TEXT PRIMARY KEY, delivered_at TEXT NOT NULL);
CREATE TABLE destinations (name TEXT PRIMARY KEY, display_name TEXT, type TEXT NOT NULL,
  channel_type TEXT, platform_id TEXT, agent_group_id TEXT);
CREATE TABLE session_routing (id INTEGER PRIMARY KEY CHECK (id = 1), channel_type TEXT,
  platform_id TEXT, thread_id TEXT);
"""

OLD_OUTBOUND_SCHEMA = """
CREATE TABLE messages_out (id TEXT PRIMARY KEY, seq INTEGER UNIQUE, in_reply_to TEXT,
  timestamp TEXT NOT NULL, deliver_after TEXT, recurrence TEXT, kind TEXT NOT NULL,
  platform_id TEXT, channel_type TEXT, thread_id TEXT, content TEXT NOT NULL);
CREATE TABLE processing_ack (message_id TEXT PRIMARY KEY, status TEXT NOT NULL,
  status_changed TEXT NOT NULL);
"""


@dataclass(frozen=True)
class V2Home:
    """A NanoClaw v2 folder written by SQL in NanoClaw's exact format."""

    root: Path
    agent_group_id: str = "ag-1760000000000-abc123"
    messaging_group_id: str = "mg-1760000000000-def456"
    session_id: str = "sess-1760000000000-ghi789"

    @property
    def central_db(self) -> Path:
        return self.root / "data" / "v2.db"

    @property
    def session_dir(self) -> Path:
        return self.root / "data" / "v2-sessions" / self.agent_group_id / self.session_id


def make_nanoclaw_v2_home(root: Path, *, extra_migrations: tuple[str, ...] = ()) -> V2Home:
    """One agent group wired to a Telegram DM, with a session whose ``inbound.db`` is old."""
    h = V2Home(root)
    h.central_db.parent.mkdir(parents=True, exist_ok=True)
    t = "2026-01-10T08:00:00.000Z"
    conn = sqlite3.connect(str(h.central_db), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(NANOCLAW_V2_SCHEMA)
    for i, name in enumerate((*NANOCLAW_V2_MIGRATIONS, *extra_migrations), start=1):
        conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (i, name, t))
    ag, mg, sess = h.agent_group_id, h.messaging_group_id, h.session_id
    conn.execute("INSERT INTO agent_groups VALUES (?, 'Andy', 'main', NULL, ?)", (ag, t))
    conn.execute(
        "INSERT INTO messaging_groups VALUES (?, 'telegram', 'telegram:42', 'Me', 0, 'strict', "
        "?, NULL)",
        (mg, t),
    )
    conn.execute(
        "INSERT INTO messaging_group_agents VALUES ('mga-1760000000000-jkl012', ?, ?, 'shared', "
        "0, ?, 'pattern', '.', 'all', 'drop')",
        (mg, ag, t),
    )
    conn.execute("INSERT INTO agent_destinations VALUES (?, 'me', 'channel', ?, ?)", (ag, mg, t))
    conn.execute("INSERT INTO users VALUES ('telegram:42', 'telegram', 'Me', ?)", (t,))
    conn.execute("INSERT INTO user_roles VALUES ('telegram:42', 'owner', NULL, NULL, ?)", (t,))
    conn.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, NULL, NULL, 'active', 'stopped', ?, ?)",
        (sess, ag, mg, t, t),
    )
    conn.execute(
        "INSERT INTO container_configs (agent_group_id, updated_at) VALUES (?, ?)", (ag, t)
    )
    conn.close()
    (root / "groups" / "main").mkdir(parents=True, exist_ok=True)
    (root / "groups" / "main" / "CLAUDE.local.md").write_text("# memory\n", encoding="utf-8")
    h.session_dir.joinpath("outbox").mkdir(parents=True, exist_ok=True)
    inbound = sqlite3.connect(str(h.session_dir / "inbound.db"), isolation_level=None)
    inbound.executescript(OLD_INBOUND_SCHEMA)
    inbound.execute(
        "INSERT INTO messages_in VALUES ('msg-1', 2, 'chat', ?, 'completed', NULL, NULL, 0, "
        "'telegram:42', 'telegram', NULL, '{\"text\":\"hi\"}')",
        (t,),
    )
    inbound.execute(
        "INSERT INTO messages_in VALUES ('task-1', 4, 'task', '2026-01-10 08:00:00', 'pending', "
        "'2026-06-01T07:00:00.000Z', '0 9 * * *', 0, 'telegram:42', 'telegram', NULL, "
        '\'{"prompt":"p","script":null}\')'
    )
    inbound.execute("INSERT INTO session_routing VALUES (1, 'telegram', 'telegram:42', NULL)")
    inbound.close()
    outbound = sqlite3.connect(str(h.session_dir / "outbound.db"), isolation_level=None)
    outbound.executescript(OLD_OUTBOUND_SCHEMA)
    outbound.execute(
        "INSERT INTO messages_out VALUES ('out-1', 3, 'msg-1', '2026-01-10 08:00:01', NULL, "
        "NULL, 'chat', 'telegram:42', 'telegram', NULL, '{\"text\":\"hello\"}')"
    )
    outbound.close()
    return h
