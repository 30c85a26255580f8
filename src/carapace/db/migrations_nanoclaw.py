"""NanoClaw's thirteen central-DB migrations, reproduced step for step so a fresh carapace
``v2.db`` has NanoClaw's final schema column for column (spec/host.md §1.3–1.4). Registered by
name in ``carapace.db.migrations.MIGRATIONS``."""

from __future__ import annotations

import json
import logging
import re
import sqlite3

from carapace.db.connection import column_names, run_statements
from carapace.timefmt import iso

logger = logging.getLogger(__name__)


def normalize_name(name: str) -> str:
    """NanoClaw's destination-name normaliser (spec/host.md §4.5)."""
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return out or "unnamed"


def initial(db: sqlite3.Connection) -> None:
    run_statements(
        db,
        """
        CREATE TABLE agent_groups (
          id             TEXT PRIMARY KEY,
          name           TEXT NOT NULL,
          folder         TEXT NOT NULL UNIQUE,
          agent_provider TEXT,
          created_at     TEXT NOT NULL
        );
        CREATE TABLE messaging_groups (
          id                    TEXT PRIMARY KEY,
          channel_type          TEXT NOT NULL,
          platform_id           TEXT NOT NULL,
          name                  TEXT,
          is_group              INTEGER DEFAULT 0,
          unknown_sender_policy TEXT NOT NULL DEFAULT 'strict',
          created_at            TEXT NOT NULL,
          UNIQUE(channel_type, platform_id)
        );
        CREATE TABLE messaging_group_agents (
          id                 TEXT PRIMARY KEY,
          messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id),
          agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id),
          trigger_rules      TEXT,
          response_scope     TEXT DEFAULT 'all',
          session_mode       TEXT DEFAULT 'shared',
          priority           INTEGER DEFAULT 0,
          created_at         TEXT NOT NULL,
          UNIQUE(messaging_group_id, agent_group_id)
        );
        CREATE TABLE users (
          id           TEXT PRIMARY KEY,
          kind         TEXT NOT NULL,
          display_name TEXT,
          created_at   TEXT NOT NULL
        );
        CREATE TABLE user_roles (
          user_id        TEXT NOT NULL REFERENCES users(id),
          role           TEXT NOT NULL,
          agent_group_id TEXT REFERENCES agent_groups(id),
          granted_by     TEXT REFERENCES users(id),
          granted_at     TEXT NOT NULL,
          PRIMARY KEY (user_id, role, agent_group_id)
        );
        CREATE INDEX idx_user_roles_scope ON user_roles(agent_group_id, role);
        CREATE TABLE agent_group_members (
          user_id        TEXT NOT NULL REFERENCES users(id),
          agent_group_id TEXT NOT NULL REFERENCES agent_groups(id),
          added_by       TEXT REFERENCES users(id),
          added_at       TEXT NOT NULL,
          PRIMARY KEY (user_id, agent_group_id)
        );
        CREATE TABLE user_dms (
          user_id            TEXT NOT NULL REFERENCES users(id),
          channel_type       TEXT NOT NULL,
          messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id),
          resolved_at        TEXT NOT NULL,
          PRIMARY KEY (user_id, channel_type)
        );
        CREATE TABLE sessions (
          id                 TEXT PRIMARY KEY,
          agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id),
          messaging_group_id TEXT REFERENCES messaging_groups(id),
          thread_id          TEXT,
          agent_provider     TEXT,
          status             TEXT DEFAULT 'active',
          container_status   TEXT DEFAULT 'stopped',
          last_active        TEXT,
          created_at         TEXT NOT NULL
        );
        CREATE INDEX idx_sessions_agent_group ON sessions(agent_group_id);
        CREATE INDEX idx_sessions_lookup ON sessions(messaging_group_id, thread_id);
        CREATE TABLE pending_questions (
          question_id    TEXT PRIMARY KEY,
          session_id     TEXT NOT NULL REFERENCES sessions(id),
          message_out_id TEXT NOT NULL,
          platform_id    TEXT,
          channel_type   TEXT,
          thread_id      TEXT,
          title          TEXT NOT NULL,
          options_json   TEXT NOT NULL,
          created_at     TEXT NOT NULL
        );
        """,
    )


def chat_sdk_state(db: sqlite3.Connection) -> None:
    run_statements(
        db,
        """
        CREATE TABLE chat_sdk_kv (
          key        TEXT PRIMARY KEY,
          value      TEXT NOT NULL,
          expires_at INTEGER
        );
        CREATE TABLE chat_sdk_subscriptions (
          thread_id     TEXT PRIMARY KEY,
          subscribed_at TEXT NOT NULL DEFAULT (datetime('now'))
        );
        CREATE TABLE chat_sdk_locks (
          thread_id  TEXT PRIMARY KEY,
          token      TEXT NOT NULL,
          expires_at INTEGER NOT NULL
        );
        CREATE TABLE chat_sdk_lists (
          key        TEXT NOT NULL,
          idx        INTEGER NOT NULL,
          value      TEXT NOT NULL,
          expires_at INTEGER,
          PRIMARY KEY (key, idx)
        );
        """,
    )


def pending_approvals(db: sqlite3.Connection) -> None:
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS pending_approvals (
          approval_id         TEXT PRIMARY KEY,
          session_id          TEXT REFERENCES sessions(id),
          request_id          TEXT NOT NULL,
          action              TEXT NOT NULL,
          payload             TEXT NOT NULL,
          created_at          TEXT NOT NULL,
          agent_group_id      TEXT REFERENCES agent_groups(id),
          channel_type        TEXT,
          platform_id         TEXT,
          platform_message_id TEXT,
          expires_at          TEXT,
          status              TEXT NOT NULL DEFAULT 'pending',
          title               TEXT NOT NULL DEFAULT '',
          options_json        TEXT NOT NULL DEFAULT '[]'
        );
        CREATE INDEX IF NOT EXISTS idx_pending_approvals_action_status
          ON pending_approvals(action, status);
        """,
    )


def agent_destinations(db: sqlite3.Connection) -> None:
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS agent_destinations (
          agent_group_id TEXT NOT NULL REFERENCES agent_groups(id),
          local_name     TEXT NOT NULL,
          target_type    TEXT NOT NULL,
          target_id      TEXT NOT NULL,
          created_at     TEXT NOT NULL,
          PRIMARY KEY (agent_group_id, local_name)
        );
        CREATE INDEX IF NOT EXISTS idx_agent_dest_target
          ON agent_destinations(target_type, target_id);
        """,
    )
    now = iso()
    rows = db.execute(
        "SELECT mga.agent_group_id, mg.id AS mg_id, mg.name, mg.channel_type "
        "FROM messaging_group_agents mga JOIN messaging_groups mg "
        "ON mg.id = mga.messaging_group_id ORDER BY mga.created_at, mga.id"
    ).fetchall()
    for r in rows:
        exists = db.execute(
            "SELECT 1 FROM agent_destinations WHERE agent_group_id=? AND target_type='channel' "
            "AND target_id=?",
            (r["agent_group_id"], r["mg_id"]),
        ).fetchone()
        if exists:
            continue
        base = normalize_name(r["name"] or f"{r['channel_type']}-{r['mg_id'][:8]}")
        name, n = base, 1
        while db.execute(
            "SELECT 1 FROM agent_destinations WHERE agent_group_id=? AND local_name=?",
            (r["agent_group_id"], name),
        ).fetchone():
            n += 1
            name = f"{base}-{n}"
        db.execute(
            "INSERT INTO agent_destinations VALUES (?, ?, 'channel', ?, ?)",
            (r["agent_group_id"], name, r["mg_id"], now),
        )


def add_column(db: sqlite3.Connection, table: str, name: str, decl: str) -> None:
    if name not in column_names(db, table):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def approvals_title_options(db: sqlite3.Connection) -> None:
    add_column(db, "pending_approvals", "title", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "pending_approvals", "options_json", "TEXT NOT NULL DEFAULT '[]'")


def dropped_messages(db: sqlite3.Connection) -> None:
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS unregistered_senders (
          channel_type       TEXT NOT NULL,
          platform_id        TEXT NOT NULL,
          user_id            TEXT,
          sender_name        TEXT,
          reason             TEXT NOT NULL,
          messaging_group_id TEXT,
          agent_group_id     TEXT,
          message_count      INTEGER NOT NULL DEFAULT 1,
          first_seen         TEXT NOT NULL,
          last_seen          TEXT NOT NULL,
          PRIMARY KEY (channel_type, platform_id)
        );
        CREATE INDEX IF NOT EXISTS idx_unregistered_senders_last_seen
          ON unregistered_senders(last_seen);
        """,
    )


def drop_pending_credentials(db: sqlite3.Connection) -> None:
    db.execute("DROP INDEX IF EXISTS idx_pending_credentials_status")
    db.execute("DROP TABLE IF EXISTS pending_credentials")


def legacy_engage(trigger_rules: str | None, response_scope: str | None) -> tuple[str, ...]:
    """Migration 010's backfill: (engage_mode, engage_pattern, sender_scope, ignored_policy)."""
    try:
        rules = json.loads(trigger_rules) if trigger_rules else {}
    except ValueError:
        rules = {}
    if not isinstance(rules, dict):
        rules = {}
    pattern = rules.get("pattern")
    if isinstance(pattern, str) and pattern:
        mode, pat = "pattern", pattern
    elif rules.get("requiresTrigger") is False or response_scope == "all":
        mode, pat = "pattern", "."
    else:
        mode, pat = "mention", None
    scope = "known" if response_scope == "allowlisted" else "all"
    return (mode, pat, scope, "drop")  # type: ignore[return-value]


def engage_modes(db: sqlite3.Connection) -> None:
    cols = column_names(db, "messaging_group_agents")
    for name in ("engage_mode", "engage_pattern", "sender_scope", "ignored_message_policy"):
        if name not in cols:
            db.execute(f"ALTER TABLE messaging_group_agents ADD COLUMN {name} TEXT")
    if "trigger_rules" in cols or "response_scope" in cols:
        has_rules, has_scope = "trigger_rules" in cols, "response_scope" in cols
        rows = db.execute(
            "SELECT id, "
            + ("trigger_rules" if has_rules else "NULL")
            + ", "
            + ("response_scope" if has_scope else "NULL")
            + " FROM messaging_group_agents"
        ).fetchall()
        for r in rows:
            mode, pat, scope, ign = legacy_engage(r[1], r[2])
            db.execute(
                "UPDATE messaging_group_agents SET engage_mode=?, engage_pattern=?, "
                "sender_scope=?, ignored_message_policy=? WHERE id=?",
                (mode, pat, scope, ign, r[0]),
            )
        if has_rules:
            db.execute("ALTER TABLE messaging_group_agents DROP COLUMN trigger_rules")
        if has_scope:
            db.execute("ALTER TABLE messaging_group_agents DROP COLUMN response_scope")


def pending_sender_approvals(db: sqlite3.Connection) -> None:
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS pending_sender_approvals (
          id                 TEXT PRIMARY KEY,
          messaging_group_id TEXT NOT NULL REFERENCES messaging_groups(id),
          agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id),
          sender_identity    TEXT NOT NULL,
          sender_name        TEXT,
          original_message   TEXT NOT NULL,
          approver_user_id   TEXT NOT NULL,
          created_at         TEXT NOT NULL,
          UNIQUE(messaging_group_id, sender_identity)
        );
        CREATE INDEX IF NOT EXISTS idx_pending_sender_approvals_mg
          ON pending_sender_approvals(messaging_group_id);
        """,
    )


def channel_registration(db: sqlite3.Connection) -> None:
    add_column(db, "messaging_groups", "denied_at", "TEXT")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS pending_channel_approvals (
          messaging_group_id TEXT PRIMARY KEY REFERENCES messaging_groups(id),
          agent_group_id     TEXT NOT NULL REFERENCES agent_groups(id),
          original_message   TEXT NOT NULL,
          approver_user_id   TEXT NOT NULL,
          created_at         TEXT NOT NULL
        )
        """
    )


def approval_render_metadata(db: sqlite3.Connection) -> None:
    for table in ("pending_channel_approvals", "pending_sender_approvals"):
        add_column(db, table, "title", "TEXT NOT NULL DEFAULT ''")
        add_column(db, table, "options_json", "TEXT NOT NULL DEFAULT '[]'")


def container_configs(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS container_configs (
          agent_group_id          TEXT PRIMARY KEY REFERENCES agent_groups(id) ON DELETE CASCADE,
          provider                TEXT,
          model                   TEXT,
          effort                  TEXT,
          image_tag               TEXT,
          assistant_name          TEXT,
          max_messages_per_prompt INTEGER,
          skills                  TEXT NOT NULL DEFAULT '"all"',
          mcp_servers             TEXT NOT NULL DEFAULT '{}',
          packages_apt            TEXT NOT NULL DEFAULT '[]',
          packages_npm            TEXT NOT NULL DEFAULT '[]',
          additional_mounts       TEXT NOT NULL DEFAULT '[]',
          updated_at              TEXT NOT NULL
        )
        """
    )


def cli_scope(db: sqlite3.Connection) -> None:
    add_column(db, "container_configs", "cli_scope", "TEXT NOT NULL DEFAULT 'group'")
