"""Central-DB migrations, keyed by *name* exactly as NanoClaw keys them (spec/host.md §1.3–1.4).

A ``v2.db`` written by NanoClaw at any version is recognised: the ledger
(``schema_version``) holds the names already applied and only the missing ones run, each
in one transaction together with its ledger row. NanoClaw's thirteen migrations are
reproduced so a fresh carapace DB has NanoClaw's final schema column for column; carapace's
own additions follow under ``carapace-*`` names (NanoClaw ignores tables it doesn't know).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from carapace.db.connection import column_names, has_table, run_statements, transaction
from carapace.errors import MigrationError
from carapace.timefmt import iso

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int  # ordering hint only; identity is the name
    name: str
    up: Callable[[sqlite3.Connection], None]


def normalize_name(name: str) -> str:
    """NanoClaw's destination-name normaliser (spec/host.md §4.5)."""
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return out or "unnamed"


def _initial(db: sqlite3.Connection) -> None:
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


def _chat_sdk_state(db: sqlite3.Connection) -> None:
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


def _pending_approvals(db: sqlite3.Connection) -> None:
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


def _agent_destinations(db: sqlite3.Connection) -> None:
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


def _add_column(db: sqlite3.Connection, table: str, name: str, decl: str) -> None:
    if name not in column_names(db, table):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _approvals_title_options(db: sqlite3.Connection) -> None:
    _add_column(db, "pending_approvals", "title", "TEXT NOT NULL DEFAULT ''")
    _add_column(db, "pending_approvals", "options_json", "TEXT NOT NULL DEFAULT '[]'")


def _dropped_messages(db: sqlite3.Connection) -> None:
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


def _drop_pending_credentials(db: sqlite3.Connection) -> None:
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


def _engage_modes(db: sqlite3.Connection) -> None:
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


def _pending_sender_approvals(db: sqlite3.Connection) -> None:
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


def _channel_registration(db: sqlite3.Connection) -> None:
    _add_column(db, "messaging_groups", "denied_at", "TEXT")
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


def _approval_render_metadata(db: sqlite3.Connection) -> None:
    for table in ("pending_channel_approvals", "pending_sender_approvals"):
        _add_column(db, table, "title", "TEXT NOT NULL DEFAULT ''")
        _add_column(db, table, "options_json", "TEXT NOT NULL DEFAULT '[]'")


def _container_configs(db: sqlite3.Connection) -> None:
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


def _cli_scope(db: sqlite3.Connection) -> None:
    _add_column(db, "container_configs", "cli_scope", "TEXT NOT NULL DEFAULT 'group'")


# carapace's own additions (names prefixed so they never collide with NanoClaw's).


def _carapace_settings(db: sqlite3.Connection) -> None:
    """Per-group settings NanoClaw has no column for (JSON object), and a host KV."""
    _add_column(db, "container_configs", "settings", "TEXT NOT NULL DEFAULT '{}'")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS carapace_meta (
          key        TEXT PRIMARY KEY,
          value      TEXT NOT NULL,
          updated_at TEXT NOT NULL
        )
        """
    )


def _unique_global_roles(db: sqlite3.Connection) -> None:
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


def _session_work(db: sqlite3.Connection) -> None:
    """The sweep's work index: sessions with due or in-flight work (spec §11.4 item 34)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS carapace_session_work ("
        "session_id TEXT PRIMARY KEY, next_due TEXT NOT NULL)"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_carapace_session_work_due "
        "ON carapace_session_work(next_due)"
    )


def _carapace_task_runs(db: sqlite3.Connection) -> None:
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


def _carapace_v1_imports(db: sqlite3.Connection) -> None:
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


def _carapace_approvals(db: sqlite3.Connection) -> None:
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


def _carapace_usage(db: sqlite3.Connection) -> None:
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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial-v2-schema", _initial),
    Migration(2, "chat-sdk-state", _chat_sdk_state),
    Migration(3, "pending-approvals", _pending_approvals),
    Migration(4, "agent-destinations", _agent_destinations),
    Migration(7, "pending-approvals-title-options", _approvals_title_options),
    Migration(8, "dropped-messages", _dropped_messages),
    Migration(9, "drop-pending-credentials", _drop_pending_credentials),
    Migration(10, "engage-modes", _engage_modes),
    Migration(11, "pending-sender-approvals", _pending_sender_approvals),
    Migration(12, "channel-registration", _channel_registration),
    Migration(13, "approval-render-metadata", _approval_render_metadata),
    Migration(14, "container-configs", _container_configs),
    Migration(15, "cli-scope", _cli_scope),
    Migration(1001, "carapace-settings", _carapace_settings),
    Migration(1002, "carapace-unique-global-roles", _unique_global_roles),
    Migration(1003, "carapace-session-work", _session_work),
    Migration(1010, "carapace-task-runs", _carapace_task_runs),
    Migration(1011, "carapace-v1-imports", _carapace_v1_imports),
    Migration(1020, "carapace-approval-expiry", _carapace_approvals),
    Migration(1030, "carapace-usage", _carapace_usage),
)

NANOCLAW_MIGRATION_NAMES = tuple(m.name for m in MIGRATIONS if not m.name.startswith("carapace-"))


def ensure_ledger(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TEXT NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_schema_version_name ON schema_version(name)")


def applied_names(db: sqlite3.Connection) -> set[str]:
    if not has_table(db, "schema_version"):
        return set()
    return {r[0] for r in db.execute("SELECT name FROM schema_version")}


def pending_migrations(
    db: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[Migration]:
    done = applied_names(db)
    return [m for m in migrations if m.name not in done]


def migrate(db: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply the missing migrations, each atomically with its ledger row. Returns their names."""
    ensure_ledger(db)
    ran: list[str] = []
    for m in pending_migrations(db, migrations):
        try:
            with transaction(db):
                m.up(db)
                db.execute(
                    "INSERT INTO schema_version (version, name, applied) VALUES "
                    "((SELECT COALESCE(MAX(version), 0) + 1 FROM schema_version), ?, ?)",
                    (m.name, iso()),
                )
        except sqlite3.Error as exc:
            raise MigrationError(f"migration {m.name!r} failed and was rolled back: {exc}")
        logger.info("applied migration %s", m.name)
        ran.append(m.name)
    return ran
