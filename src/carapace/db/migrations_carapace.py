"""carapace's own central-DB additions, under ``carapace-*`` names so they never collide with
NanoClaw's (NanoClaw ignores tables it does not know). Registered by name in
``carapace.db.migrations.MIGRATIONS``."""

from __future__ import annotations

import logging
import sqlite3

from carapace.db.connection import run_statements
from carapace.db.migrations_nanoclaw import add_column

logger = logging.getLogger(__name__)


def carapace_settings(db: sqlite3.Connection) -> None:
    """Per-group settings NanoClaw has no column for (JSON object), and a host KV."""
    add_column(db, "container_configs", "settings", "TEXT NOT NULL DEFAULT '{}'")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS carapace_meta (
          key        TEXT PRIMARY KEY,
          value      TEXT NOT NULL,
          updated_at TEXT NOT NULL
        )
        """
    )


def unique_global_roles(db: sqlite3.Connection) -> None:
    """SQLite treats NULLs as distinct in ``user_roles``' key (spec §11.1 item 13): dedupe
    the global rows (keeping the earliest grant) and forbid new duplicates by index."""
    db.execute(
        "DELETE FROM user_roles WHERE agent_group_id IS NULL AND rowid NOT IN ("
        "SELECT MIN(rowid) FROM user_roles WHERE agent_group_id IS NULL GROUP BY user_id, role)"
    )
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_user_roles_global "
        "ON user_roles(user_id, role) WHERE agent_group_id IS NULL"
    )


def session_work(db: sqlite3.Connection) -> None:
    """The sweep's work index: sessions with due or in-flight work (spec §11.4 item 34)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS carapace_session_work ("
        "session_id TEXT PRIMARY KEY, next_due TEXT NOT NULL)"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_carapace_session_work_due "
        "ON carapace_session_work(next_due)"
    )


def carapace_task_runs(db: sqlite3.Connection) -> None:
    """Task run history (v1 ``task_run_logs`` imported; the scheduler appends)."""
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS carapace_task_runs (
          id             TEXT PRIMARY KEY,
          series_id      TEXT NOT NULL,
          agent_group_id TEXT,
          session_id     TEXT,
          scheduled_for  TEXT,
          run_at         TEXT NOT NULL,
          outcome        TEXT NOT NULL,
          duration_ms    INTEGER,
          detail         TEXT,
          created_at     TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_carapace_task_runs_series
          ON carapace_task_runs(series_id);
        """,
    )


def carapace_v1_imports(db: sqlite3.Connection) -> None:
    """What ``migrate-v1`` imported (for idempotent re-runs) and the v1 chat-history archive."""
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS carapace_v1_imports (
          source_table TEXT NOT NULL,
          source_key   TEXT NOT NULL,
          target_kind  TEXT NOT NULL,
          target_id    TEXT,
          imported_at  TEXT NOT NULL,
          PRIMARY KEY (source_table, source_key, target_kind)
        );
        CREATE TABLE IF NOT EXISTS carapace_v1_messages (
          chat_jid                 TEXT NOT NULL,
          id                       TEXT NOT NULL,
          messaging_group_id       TEXT,
          sender                   TEXT,
          sender_name              TEXT,
          content                  TEXT,
          timestamp                TEXT,
          is_from_me               INTEGER,
          is_bot_message           INTEGER,
          reply_to_message_id      TEXT,
          reply_to_message_content TEXT,
          reply_to_sender_name     TEXT,
          imported_at              TEXT NOT NULL,
          PRIMARY KEY (chat_jid, id)
        );
        CREATE INDEX IF NOT EXISTS idx_carapace_v1_messages_mg
          ON carapace_v1_messages(messaging_group_id, timestamp);
        """,
    )


def carapace_approvals(db: sqlite3.Connection) -> None:
    """Card state, expiry and reply codes for every pending decision; the deny memory; the
    channel-registration conversation; a durable queue of card side effects (spec §5.7,
    §11.2 items 20–22, §11.3 items 28–29). NanoClaw's own tables are left as they are."""
    run_statements(
        db,
        """
        CREATE TABLE IF NOT EXISTS carapace_cards (
          card_id             TEXT PRIMARY KEY,
          kind                TEXT NOT NULL,
          code                TEXT NOT NULL,
          agent_group_id      TEXT,
          session_id          TEXT,
          approver_user_id    TEXT,
          candidates          TEXT NOT NULL DEFAULT '[]',
          origin_channel_type TEXT,
          title               TEXT NOT NULL DEFAULT '',
          question            TEXT NOT NULL DEFAULT '',
          options_json        TEXT NOT NULL DEFAULT '[]',
          channel_type        TEXT,
          platform_id         TEXT,
          thread_id           TEXT,
          platform_message_id TEXT,
          status              TEXT NOT NULL DEFAULT 'pending',
          created_at          TEXT NOT NULL,
          expires_at          TEXT,
          delivered_at        TEXT,
          decided_at          TEXT,
          decided_by          TEXT,
          decision            TEXT
        );
        CREATE UNIQUE INDEX IF NOT EXISTS idx_carapace_cards_code
          ON carapace_cards(code) WHERE status = 'pending';
        CREATE INDEX IF NOT EXISTS idx_carapace_cards_expiry
          ON carapace_cards(status, expires_at);
        CREATE TABLE IF NOT EXISTS carapace_card_effects (
          id         INTEGER PRIMARY KEY AUTOINCREMENT,
          card_id    TEXT,
          kind       TEXT NOT NULL,
          payload    TEXT NOT NULL,
          created_at TEXT NOT NULL,
          next_at    TEXT NOT NULL,
          attempts   INTEGER NOT NULL DEFAULT 0,
          done_at    TEXT,
          error      TEXT
        );
        CREATE INDEX IF NOT EXISTS idx_carapace_card_effects_due
          ON carapace_card_effects(next_at) WHERE done_at IS NULL;
        CREATE TABLE IF NOT EXISTS carapace_denied_senders (
          messaging_group_id TEXT NOT NULL,
          sender_identity    TEXT NOT NULL,
          denied_until       TEXT NOT NULL,
          denied_by          TEXT,
          denied_at          TEXT NOT NULL,
          PRIMARY KEY (messaging_group_id, sender_identity)
        );
        CREATE TABLE IF NOT EXISTS carapace_channel_registrations (
          messaging_group_id TEXT PRIMARY KEY,
          approver_user_id   TEXT NOT NULL,
          channel_type       TEXT NOT NULL,
          platform_id        TEXT NOT NULL,
          thread_id          TEXT,
          stage              TEXT NOT NULL,
          created_at         TEXT NOT NULL
        );
        """,
    )


def carapace_usage(db: sqlite3.Connection) -> None:
    """Model calls through the host's egress proxy, and per-group budgets (docs: README)."""
    run_statements(
        db,
        """
        CREATE TABLE carapace_usage (
          id                 INTEGER PRIMARY KEY AUTOINCREMENT,
          at                 TEXT NOT NULL,
          agent_group_id     TEXT NOT NULL,
          session_id         TEXT,
          provider           TEXT NOT NULL,
          model              TEXT,
          input_tokens       INTEGER NOT NULL DEFAULT 0,
          output_tokens      INTEGER NOT NULL DEFAULT 0,
          cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
          cache_write_tokens INTEGER NOT NULL DEFAULT 0,
          cost_usd           REAL,
          latency_ms         REAL NOT NULL DEFAULT 0,
          status             INTEGER NOT NULL,
          streamed           INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX idx_carapace_usage_group_at ON carapace_usage(agent_group_id, at);
        CREATE INDEX idx_carapace_usage_at ON carapace_usage(at);
        CREATE TABLE carapace_budgets (
          scope          TEXT PRIMARY KEY,
          daily_tokens   INTEGER,
          monthly_tokens INTEGER,
          daily_usd      REAL,
          monthly_usd    REAL,
          warn_share     REAL,
          reset_at       TEXT,
          updated_at     TEXT NOT NULL
        );
        """,
    )
