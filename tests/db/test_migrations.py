"""The migration ledger: keyed by name, NanoClaw DBs of any age recognised, atomic steps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from carapace.db.connection import connect
from carapace.db.migrations import (
    MIGRATIONS,
    NANOCLAW_MIGRATION_NAMES,
    Migration,
    applied_names,
    migrate,
)
from carapace.db.migrations_nanoclaw import legacy_engage
from carapace.errors import MigrationError

SEED_ERA = MIGRATIONS[:7]  # 001–009: NanoClaw's early v2, as in the seed analysis


def schema_of(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    out: dict[str, list[tuple[object, ...]]] = {}
    for t in tables:
        out[t] = [tuple(r) for r in db.execute(f"PRAGMA table_info({t})")]
        out[t + "#idx"] = sorted(tuple(r)[1:3] for r in db.execute(f"PRAGMA index_list({t})"))
    return out


def test_fresh_db_runs_every_migration_in_order(tmp_path: Path) -> None:
    db = connect(tmp_path / "v2.db")
    ran = migrate(db)
    assert ran == [m.name for m in MIGRATIONS]
    rows = db.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    assert [r[1] for r in rows] == ran
    applied = db.execute("SELECT applied FROM schema_version").fetchone()[0]
    assert applied.endswith("Z") and "T" in applied


def test_rerun_is_a_noop(tmp_path: Path) -> None:
    db = connect(tmp_path / "v2.db")
    migrate(db)
    before = schema_of(db)
    assert migrate(db) == []
    assert schema_of(db) == before
    assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_seed_era_db_is_recognised_and_upgraded(tmp_path: Path) -> None:
    """A v2.db made by NanoClaw's migrations 001–009, with a legacy wiring, upgrades in place."""
    db = connect(tmp_path / "v2.db")
    assert migrate(db, SEED_ERA) == list(NANOCLAW_MIGRATION_NAMES[:7])
    db.execute(
        "INSERT INTO agent_groups VALUES ('ag-1', 'Main', 'main', NULL, '2025-01-01T00:00:00.000Z')"
    )
    db.execute(
        "INSERT INTO messaging_groups (id, channel_type, platform_id, name, is_group, "
        "unknown_sender_policy, created_at) VALUES "
        "('mg-1', 'telegram', '-100', 'Family', 1, 'strict', '2025-01-01T00:00:00.000Z'),"
        "('mg-2', 'telegram', '42', NULL, 0, 'strict', '2025-01-01T00:00:00.000Z'),"
        "('mg-3', 'discord', '7', NULL, 0, 'strict', '2025-01-01T00:00:00.000Z')"
    )
    db.execute(
        "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, "
        "trigger_rules, response_scope, created_at) VALUES "
        "('w1', 'mg-1', 'ag-1', '{\"pattern\":\"^@bot\"}', 'all', 'x'),"
        "('w2', 'mg-2', 'ag-1', '{\"requiresTrigger\":true}', 'allowlisted', 'x'),"
        "('w3', 'mg-3', 'ag-1', 'not json', 'triggered', 'x')"
    )
    ran = migrate(db)
    assert ran == [m.name for m in MIGRATIONS[7:]]
    wirings = {
        r[0]: tuple(r[1:])
        for r in db.execute(
            "SELECT id, engage_mode, engage_pattern, sender_scope, ignored_message_policy "
            "FROM messaging_group_agents"
        )
    }
    assert wirings == {
        "w1": ("pattern", "^@bot", "all", "drop"),
        "w2": ("mention", None, "known", "drop"),
        "w3": ("mention", None, "all", "drop"),
    }
    cols = [r[1] for r in db.execute("PRAGMA table_info(messaging_group_agents)")]
    assert "trigger_rules" not in cols and "response_scope" not in cols
    # The final schema equals a fresh install's.
    fresh = connect(tmp_path / "fresh.db")
    migrate(fresh)
    assert schema_of(db) == schema_of(fresh)


def test_agent_destinations_backfill_matches_nanoclaw(tmp_path: Path) -> None:
    db = connect(tmp_path / "v2.db")
    migrate(db, MIGRATIONS[:3])
    db.execute("INSERT INTO agent_groups VALUES ('ag-1', 'Main', 'main', NULL, 'x')")
    db.execute(
        "INSERT INTO messaging_groups (id, channel_type, platform_id, name, created_at) VALUES "
        "('mg-aaaaaaaaaa', 'telegram', '1', 'Family Chat!', 'x'),"
        "('mg-bbbbbbbbbb', 'telegram', '2', 'family chat', 'x'),"
        "('mg-cccccccccc', 'slack', '3', NULL, 'x')"
    )
    for i, mg in enumerate(("mg-aaaaaaaaaa", "mg-bbbbbbbbbb", "mg-cccccccccc")):
        db.execute(
            "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, "
            "created_at) VALUES (?, ?, 'ag-1', ?)",
            (f"w{i}", mg, f"2025-01-0{i + 1}"),
        )
    migrate(db)
    names = {r[1]: r[0] for r in db.execute("SELECT local_name, target_id FROM agent_destinations")}
    assert names == {
        "mg-aaaaaaaaaa": "family-chat",
        "mg-bbbbbbbbbb": "family-chat-2",
        "mg-cccccccccc": "slack-mg-ccccc",
    }


def test_todays_nanoclaw_db_runs_only_carapace_migrations(tmp_path: Path) -> None:
    db = connect(tmp_path / "v2.db")
    nanoclaw = tuple(m for m in MIGRATIONS if m.name in NANOCLAW_MIGRATION_NAMES)
    migrate(db, nanoclaw)
    # NanoClaw numbers its ledger by applied order; an unknown skill migration may be there too.
    db.execute("INSERT INTO schema_version (version, name, applied) VALUES (99, 'some-skill', 'x')")
    ran = migrate(db)
    assert ran and all(name.startswith("carapace-") for name in ran)
    assert "some-skill" in applied_names(db)


def test_failing_migration_rolls_back_whole(tmp_path: Path) -> None:
    db = connect(tmp_path / "v2.db")
    migrate(db)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        conn.execute("INSERT INTO agent_groups VALUES ('ag-x', 'X', 'x', NULL, 'now')")
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(MigrationError, match="broken-one"):
        migrate(db, (*MIGRATIONS, Migration(9999, "broken-one", broken)))
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables
    assert db.execute("SELECT COUNT(*) FROM agent_groups").fetchone()[0] == 0
    assert "broken-one" not in applied_names(db)
    assert not db.in_transaction


@pytest.mark.parametrize(
    ("rules", "scope", "expected"),
    [
        ('{"pattern":"hi"}', "triggered", ("pattern", "hi", "all", "drop")),
        ('{"pattern":""}', "all", ("pattern", ".", "all", "drop")),
        ('{"requiresTrigger":false}', "allowlisted", ("pattern", ".", "known", "drop")),
        (None, None, ("mention", None, "all", "drop")),
        ("[1,2]", "triggered", ("mention", None, "all", "drop")),
    ],
)
def test_legacy_engage_backfill_rules(
    rules: str | None, scope: str | None, expected: tuple[object, ...]
) -> None:
    assert legacy_engage(rules, scope) == expected
