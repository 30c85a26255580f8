"""Central-DB migrations, keyed by *name* exactly as NanoClaw keys them (spec/host.md §1.3–1.4).

A ``v2.db`` written by NanoClaw at any version is recognised: the ledger
(``schema_version``) holds the names already applied and only the missing ones run, each
in one transaction together with its ledger row. NanoClaw's thirteen migrations are
reproduced (``migrations_nanoclaw``) so a fresh carapace DB has NanoClaw's final schema column
for column; carapace's own additions (``migrations_carapace``) follow under ``carapace-*``
names (NanoClaw ignores tables it doesn't know).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from carapace.db import migrations_carapace as carapace
from carapace.db import migrations_nanoclaw as nanoclaw
from carapace.db.connection import has_table, transaction
from carapace.errors import MigrationError
from carapace.timefmt import iso

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int  # ordering hint only; identity is the name
    name: str
    up: Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial-v2-schema", nanoclaw.initial),
    Migration(2, "chat-sdk-state", nanoclaw.chat_sdk_state),
    Migration(3, "pending-approvals", nanoclaw.pending_approvals),
    Migration(4, "agent-destinations", nanoclaw.agent_destinations),
    Migration(7, "pending-approvals-title-options", nanoclaw.approvals_title_options),
    Migration(8, "dropped-messages", nanoclaw.dropped_messages),
    Migration(9, "drop-pending-credentials", nanoclaw.drop_pending_credentials),
    Migration(10, "engage-modes", nanoclaw.engage_modes),
    Migration(11, "pending-sender-approvals", nanoclaw.pending_sender_approvals),
    Migration(12, "channel-registration", nanoclaw.channel_registration),
    Migration(13, "approval-render-metadata", nanoclaw.approval_render_metadata),
    Migration(14, "container-configs", nanoclaw.container_configs),
    Migration(15, "cli-scope", nanoclaw.cli_scope),
    Migration(1001, "carapace-settings", carapace.carapace_settings),
    Migration(1002, "carapace-unique-global-roles", carapace.unique_global_roles),
    Migration(1003, "carapace-session-work", carapace.session_work),
    Migration(1010, "carapace-task-runs", carapace.carapace_task_runs),
    Migration(1011, "carapace-v1-imports", carapace.carapace_v1_imports),
    Migration(1020, "carapace-approval-expiry", carapace.carapace_approvals),
    Migration(1030, "carapace-usage", carapace.carapace_usage),
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
