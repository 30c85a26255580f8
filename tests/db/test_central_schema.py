"""The central schema matches NanoClaw's final schema (spec/host.md §1.2) table by table."""

from __future__ import annotations

import sqlite3

# (name, type, notnull, default, pk-position) in physical order, as PRAGMA table_info reports.
EXPECTED: dict[str, list[tuple[str, str, int, str | None, int]]] = {
    "schema_version": [
        ("version", "INTEGER", 0, None, 1),
        ("name", "TEXT", 1, None, 0),
        ("applied", "TEXT", 1, None, 0),
    ],
    "agent_groups": [
        ("id", "TEXT", 0, None, 1),
        ("name", "TEXT", 1, None, 0),
        ("folder", "TEXT", 1, None, 0),
        ("agent_provider", "TEXT", 0, None, 0),
        ("created_at", "TEXT", 1, None, 0),
    ],
    "messaging_groups": [
        ("id", "TEXT", 0, None, 1),
        ("channel_type", "TEXT", 1, None, 0),
        ("platform_id", "TEXT", 1, None, 0),
        ("name", "TEXT", 0, None, 0),
        ("is_group", "INTEGER", 0, "0", 0),
        ("unknown_sender_policy", "TEXT", 1, "'strict'", 0),
        ("created_at", "TEXT", 1, None, 0),
        ("denied_at", "TEXT", 0, None, 0),
    ],
    "messaging_group_agents": [
        ("id", "TEXT", 0, None, 1),
        ("messaging_group_id", "TEXT", 1, None, 0),
        ("agent_group_id", "TEXT", 1, None, 0),
        ("session_mode", "TEXT", 0, "'shared'", 0),
        ("priority", "INTEGER", 0, "0", 0),
        ("created_at", "TEXT", 1, None, 0),
        ("engage_mode", "TEXT", 0, None, 0),
        ("engage_pattern", "TEXT", 0, None, 0),
        ("sender_scope", "TEXT", 0, None, 0),
        ("ignored_message_policy", "TEXT", 0, None, 0),
    ],
    "users": [
        ("id", "TEXT", 0, None, 1),
        ("kind", "TEXT", 1, None, 0),
        ("display_name", "TEXT", 0, None, 0),
        ("created_at", "TEXT", 1, None, 0),
    ],
    "user_roles": [
        ("user_id", "TEXT", 1, None, 1),
        ("role", "TEXT", 1, None, 2),
        ("agent_group_id", "TEXT", 0, None, 3),
        ("granted_by", "TEXT", 0, None, 0),
        ("granted_at", "TEXT", 1, None, 0),
    ],
    "agent_group_members": [
        ("user_id", "TEXT", 1, None, 1),
        ("agent_group_id", "TEXT", 1, None, 2),
        ("added_by", "TEXT", 0, None, 0),
        ("added_at", "TEXT", 1, None, 0),
    ],
    "user_dms": [
        ("user_id", "TEXT", 1, None, 1),
        ("channel_type", "TEXT", 1, None, 2),
        ("messaging_group_id", "TEXT", 1, None, 0),
        ("resolved_at", "TEXT", 1, None, 0),
    ],
    "sessions": [
        ("id", "TEXT", 0, None, 1),
        ("agent_group_id", "TEXT", 1, None, 0),
        ("messaging_group_id", "TEXT", 0, None, 0),
        ("thread_id", "TEXT", 0, None, 0),
        ("agent_provider", "TEXT", 0, None, 0),
        ("status", "TEXT", 0, "'active'", 0),
        ("container_status", "TEXT", 0, "'stopped'", 0),
        ("last_active", "TEXT", 0, None, 0),
        ("created_at", "TEXT", 1, None, 0),
    ],
    "pending_questions": [
        ("question_id", "TEXT", 0, None, 1),
        ("session_id", "TEXT", 1, None, 0),
        ("message_out_id", "TEXT", 1, None, 0),
        ("platform_id", "TEXT", 0, None, 0),
        ("channel_type", "TEXT", 0, None, 0),
        ("thread_id", "TEXT", 0, None, 0),
        ("title", "TEXT", 1, None, 0),
        ("options_json", "TEXT", 1, None, 0),
        ("created_at", "TEXT", 1, None, 0),
    ],
    "chat_sdk_kv": [
        ("key", "TEXT", 0, None, 1),
        ("value", "TEXT", 1, None, 0),
        ("expires_at", "INTEGER", 0, None, 0),
    ],
    "chat_sdk_subscriptions": [
        ("thread_id", "TEXT", 0, None, 1),
        ("subscribed_at", "TEXT", 1, "datetime('now')", 0),
    ],
    "chat_sdk_locks": [
        ("thread_id", "TEXT", 0, None, 1),
        ("token", "TEXT", 1, None, 0),
        ("expires_at", "INTEGER", 1, None, 0),
    ],
    "chat_sdk_lists": [
        ("key", "TEXT", 1, None, 1),
        ("idx", "INTEGER", 1, None, 2),
        ("value", "TEXT", 1, None, 0),
        ("expires_at", "INTEGER", 0, None, 0),
    ],
    "pending_approvals": [
        ("approval_id", "TEXT", 0, None, 1),
        ("session_id", "TEXT", 0, None, 0),
        ("request_id", "TEXT", 1, None, 0),
        ("action", "TEXT", 1, None, 0),
        ("payload", "TEXT", 1, None, 0),
        ("created_at", "TEXT", 1, None, 0),
        ("agent_group_id", "TEXT", 0, None, 0),
        ("channel_type", "TEXT", 0, None, 0),
        ("platform_id", "TEXT", 0, None, 0),
        ("platform_message_id", "TEXT", 0, None, 0),
        ("expires_at", "TEXT", 0, None, 0),
        ("status", "TEXT", 1, "'pending'", 0),
        ("title", "TEXT", 1, "''", 0),
        ("options_json", "TEXT", 1, "'[]'", 0),
    ],
    "agent_destinations": [
        ("agent_group_id", "TEXT", 1, None, 1),
        ("local_name", "TEXT", 1, None, 2),
        ("target_type", "TEXT", 1, None, 0),
        ("target_id", "TEXT", 1, None, 0),
        ("created_at", "TEXT", 1, None, 0),
    ],
    "unregistered_senders": [
        ("channel_type", "TEXT", 1, None, 1),
        ("platform_id", "TEXT", 1, None, 2),
        ("user_id", "TEXT", 0, None, 0),
        ("sender_name", "TEXT", 0, None, 0),
        ("reason", "TEXT", 1, None, 0),
        ("messaging_group_id", "TEXT", 0, None, 0),
        ("agent_group_id", "TEXT", 0, None, 0),
        ("message_count", "INTEGER", 1, "1", 0),
        ("first_seen", "TEXT", 1, None, 0),
        ("last_seen", "TEXT", 1, None, 0),
    ],
    "pending_sender_approvals": [
        ("id", "TEXT", 0, None, 1),
        ("messaging_group_id", "TEXT", 1, None, 0),
        ("agent_group_id", "TEXT", 1, None, 0),
        ("sender_identity", "TEXT", 1, None, 0),
        ("sender_name", "TEXT", 0, None, 0),
        ("original_message", "TEXT", 1, None, 0),
        ("approver_user_id", "TEXT", 1, None, 0),
        ("created_at", "TEXT", 1, None, 0),
        ("title", "TEXT", 1, "''", 0),
        ("options_json", "TEXT", 1, "'[]'", 0),
    ],
    "pending_channel_approvals": [
        ("messaging_group_id", "TEXT", 0, None, 1),
        ("agent_group_id", "TEXT", 1, None, 0),
        ("original_message", "TEXT", 1, None, 0),
        ("approver_user_id", "TEXT", 1, None, 0),
        ("created_at", "TEXT", 1, None, 0),
        ("title", "TEXT", 1, "''", 0),
        ("options_json", "TEXT", 1, "'[]'", 0),
    ],
    "container_configs": [
        ("agent_group_id", "TEXT", 0, None, 1),
        ("provider", "TEXT", 0, None, 0),
        ("model", "TEXT", 0, None, 0),
        ("effort", "TEXT", 0, None, 0),
        ("image_tag", "TEXT", 0, None, 0),
        ("assistant_name", "TEXT", 0, None, 0),
        ("max_messages_per_prompt", "INTEGER", 0, None, 0),
        ("skills", "TEXT", 1, "'\"all\"'", 0),
        ("mcp_servers", "TEXT", 1, "'{}'", 0),
        ("packages_apt", "TEXT", 1, "'[]'", 0),
        ("packages_npm", "TEXT", 1, "'[]'", 0),
        ("additional_mounts", "TEXT", 1, "'[]'", 0),
        ("updated_at", "TEXT", 1, None, 0),
        ("cli_scope", "TEXT", 1, "'group'", 0),
    ],
}

# carapace's own additions come after NanoClaw's columns (so positions above still hold).
CARAPACE_EXTRA_COLUMNS = {"container_configs": {"settings"}}

EXPECTED_INDEXES = {
    "idx_schema_version_name": ("schema_version", ["name"], 1),
    "idx_user_roles_scope": ("user_roles", ["agent_group_id", "role"], 0),
    "idx_sessions_agent_group": ("sessions", ["agent_group_id"], 0),
    "idx_sessions_lookup": ("sessions", ["messaging_group_id", "thread_id"], 0),
    "idx_pending_approvals_action_status": ("pending_approvals", ["action", "status"], 0),
    "idx_agent_dest_target": ("agent_destinations", ["target_type", "target_id"], 0),
    "idx_unregistered_senders_last_seen": ("unregistered_senders", ["last_seen"], 0),
    "idx_pending_sender_approvals_mg": ("pending_sender_approvals", ["messaging_group_id"], 0),
}

EXPECTED_UNIQUE = {
    "agent_groups": [["folder"]],
    "messaging_groups": [["channel_type", "platform_id"]],
    "messaging_group_agents": [["messaging_group_id", "agent_group_id"]],
    "pending_sender_approvals": [["messaging_group_id", "sender_identity"]],
}

EXPECTED_FKS = {
    "messaging_group_agents": {
        ("messaging_group_id", "messaging_groups", "id"),
        ("agent_group_id", "agent_groups", "id"),
    },
    "user_roles": {
        ("user_id", "users", "id"),
        ("agent_group_id", "agent_groups", "id"),
        ("granted_by", "users", "id"),
    },
    "agent_group_members": {
        ("user_id", "users", "id"),
        ("agent_group_id", "agent_groups", "id"),
        ("added_by", "users", "id"),
    },
    "user_dms": {("user_id", "users", "id"), ("messaging_group_id", "messaging_groups", "id")},
    "sessions": {
        ("agent_group_id", "agent_groups", "id"),
        ("messaging_group_id", "messaging_groups", "id"),
    },
    "pending_questions": {("session_id", "sessions", "id")},
    "pending_approvals": {
        ("session_id", "sessions", "id"),
        ("agent_group_id", "agent_groups", "id"),
    },
    "agent_destinations": {("agent_group_id", "agent_groups", "id")},
    "pending_sender_approvals": {
        ("messaging_group_id", "messaging_groups", "id"),
        ("agent_group_id", "agent_groups", "id"),
    },
    "pending_channel_approvals": {
        ("messaging_group_id", "messaging_groups", "id"),
        ("agent_group_id", "agent_groups", "id"),
    },
    "container_configs": {("agent_group_id", "agent_groups", "id")},
}


def table_info(db: sqlite3.Connection, table: str) -> list[tuple[str, str, int, str | None, int]]:
    return [(r[1], r[2], r[3], r[4], r[5]) for r in db.execute(f"PRAGMA table_info({table})")]


def test_every_nanoclaw_table_matches_column_for_column(central: sqlite3.Connection) -> None:
    for table, expected in EXPECTED.items():
        actual = table_info(central, table)
        extra = CARAPACE_EXTRA_COLUMNS.get(table, set())
        assert [c for c in actual if c[0] not in extra] == expected, table
        assert [c[0] for c in actual[len(expected) :]] == sorted(extra) or not extra


def test_indexes_match(central: sqlite3.Connection) -> None:
    for name, (table, cols, unique) in EXPECTED_INDEXES.items():
        info = [r[2] for r in central.execute(f"PRAGMA index_info({name})")]
        assert info == cols, name
        listed = {r[1]: r[2] for r in central.execute(f"PRAGMA index_list({table})")}
        assert listed[name] == unique, name


def test_unique_constraints(central: sqlite3.Connection) -> None:
    for table, groups in EXPECTED_UNIQUE.items():
        uniques = []
        for r in central.execute(f"PRAGMA index_list({table})"):
            if r[2] and r[3] == "u":
                uniques.append([c[2] for c in central.execute(f"PRAGMA index_info({r[1]})")])
        for cols in groups:
            assert cols in uniques, (table, cols)


def test_foreign_keys(central: sqlite3.Connection) -> None:
    for table, fks in EXPECTED_FKS.items():
        actual = {(r[3], r[2], r[4]) for r in central.execute(f"PRAGMA foreign_key_list({table})")}
        assert actual == fks, table
    cascade = [r[6] for r in central.execute("PRAGMA foreign_key_list(container_configs)")]
    assert cascade == ["CASCADE"]


def test_pragmas(central: sqlite3.Connection) -> None:
    assert central.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert central.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert central.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert central.isolation_level is None


def test_no_legacy_tables(central: sqlite3.Connection) -> None:
    names = {r[0] for r in central.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "pending_credentials" not in names
    assert set(EXPECTED) <= names
