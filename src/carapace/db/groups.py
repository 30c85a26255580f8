"""Agent groups and their container configs (``agent_groups``, ``container_configs``)."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.errors import ConflictError, NotFoundError, ValidationError
from carapace.jsonutil import dumps, loads_or
from carapace.timefmt import iso, new_id

FOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_FOLDERS = {"global", ".", ".."}


@dataclass(frozen=True)
class AgentGroup:
    id: str
    name: str
    folder: str
    agent_provider: str | None
    created_at: str


@dataclass(frozen=True)
class ContainerConfig:
    agent_group_id: str
    provider: str | None = None
    model: str | None = None
    effort: str | None = None
    image_tag: str | None = None
    assistant_name: str | None = None
    max_messages_per_prompt: int | None = None
    skills: str = '"all"'
    mcp_servers: str = "{}"
    packages_apt: str = "[]"
    packages_npm: str = "[]"
    additional_mounts: str = "[]"
    updated_at: str = ""
    cli_scope: str = "group"
    settings: str = "{}"

    def settings_dict(self) -> dict[str, Any]:
        value = loads_or(self.settings, {})
        return value if isinstance(value, dict) else {}

    def to_json(self) -> dict[str, Any]:
        """The ``container.json`` shape NanoClaw materialises (camelCase keys)."""
        return {
            "provider": self.provider,
            "model": self.model,
            "effort": self.effort,
            "imageTag": self.image_tag,
            "assistantName": self.assistant_name,
            "maxMessagesPerPrompt": self.max_messages_per_prompt,
            "skills": loads_or(self.skills, "all"),
            "mcpServers": loads_or(self.mcp_servers, {}),
            "packages": {
                "apt": loads_or(self.packages_apt, []),
                "npm": loads_or(self.packages_npm, []),
            },
            "additionalMounts": loads_or(self.additional_mounts, []),
            "cliScope": self.cli_scope,
            "settings": self.settings_dict(),
        }


CLI_SCOPES = ("disabled", "group", "global")


def validate_folder(folder: str) -> str:
    if not FOLDER_RE.match(folder) or folder in RESERVED_FOLDERS:
        raise ValidationError(
            f"invalid folder name {folder!r}: use 1-64 letters, digits, '_', '-', '.', "
            "starting with a letter or digit (and not 'global')"
        )
    return folder


# Providers are stored under NanoClaw's names where NanoClaw has one: the Claude Agent SDK
# provider is NanoClaw's ``claude`` (also accepted as ``claude-agent-sdk``). ``anthropic``
# (the Messages API loop) has no NanoClaw counterpart and is stored as it is.
STORED_PROVIDER_NAMES = {"claude-agent-sdk": "claude"}


def stored_provider(name: str | None) -> str | None:
    """The provider name as the DB stores it (NanoClaw's name where NanoClaw has one)."""
    if name is None:
        return None
    key = name.strip().lower()
    return STORED_PROVIDER_NAMES.get(key, key) if key else None


def create_agent_group(
    db: sqlite3.Connection,
    name: str,
    folder: str,
    *,
    id: str | None = None,
    agent_provider: str | None = None,
    now: datetime | None = None,
) -> AgentGroup:
    """Insert the group and its ``container_configs`` row (the folder is the caller's job)."""
    validate_folder(folder)
    if not name.strip():
        raise ValidationError("agent group name must not be empty")
    group = AgentGroup(
        id or new_id("ag", now), name, folder, stored_provider(agent_provider), iso(now)
    )
    with transaction(db):
        if db.execute("SELECT 1 FROM agent_groups WHERE folder=?", (folder,)).fetchone():
            raise ConflictError(f"an agent group with folder {folder!r} exists already")
        if db.execute("SELECT 1 FROM agent_groups WHERE id=?", (group.id,)).fetchone():
            raise ConflictError(f"agent group {group.id} exists already")
        db.execute(
            "INSERT INTO agent_groups (id, name, folder, agent_provider, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (group.id, group.name, group.folder, group.agent_provider, group.created_at),
        )
        ensure_container_config(db, group.id, now=now)
    return group


def get_agent_group(db: sqlite3.Connection, id: str) -> AgentGroup | None:
    return from_row(
        AgentGroup, db.execute("SELECT * FROM agent_groups WHERE id=?", (id,)).fetchone()
    )


def get_agent_group_by_folder(db: sqlite3.Connection, folder: str) -> AgentGroup | None:
    row = db.execute("SELECT * FROM agent_groups WHERE folder=?", (folder,)).fetchone()
    return from_row(AgentGroup, row)


def require_agent_group(db: sqlite3.Connection, id_or_folder: str) -> AgentGroup:
    group = get_agent_group(db, id_or_folder) or get_agent_group_by_folder(db, id_or_folder)
    if group is None:
        raise NotFoundError(f"no agent group {id_or_folder!r}")
    return group


def list_agent_groups(db: sqlite3.Connection) -> list[AgentGroup]:
    return from_rows(
        AgentGroup, db.execute("SELECT * FROM agent_groups ORDER BY name, id").fetchall()
    )


def update_agent_group(
    db: sqlite3.Connection, id: str, *, name: str | None = None, agent_provider: str | None = None
) -> AgentGroup:
    group = get_agent_group(db, id)
    if group is None:
        raise NotFoundError(f"no agent group {id!r}")
    with transaction(db):
        if name is not None:
            if not name.strip():
                raise ValidationError("agent group name must not be empty")
            db.execute("UPDATE agent_groups SET name=? WHERE id=?", (name, id))
        if agent_provider is not None:
            db.execute(
                "UPDATE agent_groups SET agent_provider=? WHERE id=?",
                (stored_provider(agent_provider), id),
            )
    result = get_agent_group(db, id)
    assert result is not None
    return result


def group_dependents(db: sqlite3.Connection, id: str) -> dict[str, int]:
    """Rows in other tables that still point at the group (for delete refusals)."""
    checks = {
        "wirings": "SELECT COUNT(*) FROM messaging_group_agents WHERE agent_group_id=?",
        "sessions": "SELECT COUNT(*) FROM sessions WHERE agent_group_id=?",
        "roles": "SELECT COUNT(*) FROM user_roles WHERE agent_group_id=?",
        "members": "SELECT COUNT(*) FROM agent_group_members WHERE agent_group_id=?",
        "destinations": "SELECT COUNT(*) FROM agent_destinations WHERE agent_group_id=?1 "
        "OR (target_type='agent' AND target_id=?1)",
        "approvals": "SELECT COUNT(*) FROM pending_approvals WHERE agent_group_id=?",
        "sender_approvals": "SELECT COUNT(*) FROM pending_sender_approvals WHERE agent_group_id=?",
        "channel_approvals": "SELECT COUNT(*) FROM pending_channel_approvals WHERE agent_group_id=?",
    }
    out = {}
    for name, sql in checks.items():
        n = int(db.execute(sql, (id,)).fetchone()[0])
        if n:
            out[name] = n
    return out


def delete_agent_group(db: sqlite3.Connection, id: str, *, force: bool = False) -> None:
    """Delete a group; refuses while other rows depend on it unless ``force`` cascades."""
    if get_agent_group(db, id) is None:
        raise NotFoundError(f"no agent group {id!r}")
    deps = group_dependents(db, id)
    if deps and not force:
        listing = ", ".join(f"{n} {k}" for k, n in deps.items())
        raise ConflictError(
            f"agent group {id} is still used by {listing}; use --force to delete them too"
        )
    with transaction(db):
        sess = "SELECT id FROM sessions WHERE agent_group_id=?"
        db.execute(f"DELETE FROM pending_questions WHERE session_id IN ({sess})", (id,))
        db.execute(f"DELETE FROM pending_approvals WHERE session_id IN ({sess})", (id,))
        for sql in (
            "DELETE FROM pending_approvals WHERE agent_group_id=?",
            "DELETE FROM pending_sender_approvals WHERE agent_group_id=?",
            "DELETE FROM pending_channel_approvals WHERE agent_group_id=?",
            "DELETE FROM sessions WHERE agent_group_id=?",
            "DELETE FROM messaging_group_agents WHERE agent_group_id=?",
            "DELETE FROM user_roles WHERE agent_group_id=?",
            "DELETE FROM agent_group_members WHERE agent_group_id=?",
            "DELETE FROM agent_destinations WHERE agent_group_id=?",
            "DELETE FROM agent_destinations WHERE target_type='agent' AND target_id=?",
            "DELETE FROM container_configs WHERE agent_group_id=?",
            "DELETE FROM agent_groups WHERE id=?",
        ):
            db.execute(sql, (id,))


def ensure_container_config(
    db: sqlite3.Connection, agent_group_id: str, *, now: datetime | None = None
) -> None:
    db.execute(
        "INSERT OR IGNORE INTO container_configs (agent_group_id, updated_at) VALUES (?, ?)",
        (agent_group_id, iso(now)),
    )


def get_container_config(db: sqlite3.Connection, agent_group_id: str) -> ContainerConfig | None:
    row = db.execute(
        "SELECT * FROM container_configs WHERE agent_group_id=?", (agent_group_id,)
    ).fetchone()
    return from_row(ContainerConfig, row)


_JSON_FIELDS = {
    "skills",
    "mcp_servers",
    "packages_apt",
    "packages_npm",
    "additional_mounts",
    "settings",
}
_CONFIG_FIELDS = {
    "provider", "model", "effort", "image_tag", "assistant_name", "max_messages_per_prompt",
    "cli_scope", *_JSON_FIELDS,
}  # fmt: skip


def update_container_config(
    db: sqlite3.Connection,
    agent_group_id: str,
    changes: dict[str, Any],
    *,
    now: datetime | None = None,
) -> ContainerConfig:
    """Update config columns; JSON columns take Python values. Unknown keys are refused."""
    unknown = set(changes) - _CONFIG_FIELDS
    if unknown:
        raise ValidationError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    if "cli_scope" in changes and changes["cli_scope"] not in CLI_SCOPES:
        raise ValidationError(f"cli_scope must be one of {', '.join(CLI_SCOPES)}")
    mmp = changes.get("max_messages_per_prompt")
    if mmp is not None and (not isinstance(mmp, int) or mmp < 1):
        raise ValidationError("max_messages_per_prompt must be a positive integer")
    if get_agent_group(db, agent_group_id) is None:
        raise NotFoundError(f"no agent group {agent_group_id!r}")
    if isinstance(changes.get("provider"), str):
        changes = {**changes, "provider": stored_provider(changes["provider"])}
    with transaction(db):
        ensure_container_config(db, agent_group_id, now=now)
        for key, value in changes.items():
            stored = dumps(value) if key in _JSON_FIELDS else value
            db.execute(
                f"UPDATE container_configs SET {key}=? WHERE agent_group_id=?",
                (stored, agent_group_id),
            )
        db.execute(
            "UPDATE container_configs SET updated_at=? WHERE agent_group_id=?",
            (iso(now), agent_group_id),
        )
    cfg = get_container_config(db, agent_group_id)
    assert cfg is not None
    return cfg
