"""``carapace init``: make a home usable — migrations, and a first agent on first run.

Only when no agent group exists yet, it creates: the agent group ``main`` (folder
``groups/main/`` with ``CLAUDE.md``), the local owner ``cli:local``, a messaging group for
the local CLI channel wired to ``main`` (``pattern`` ``.``: every message engages) and its
destination. A second run changes nothing and says so.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from carapace.config import Home
from carapace.db import groups, messaging, users
from carapace.db.central import open_central
from carapace.db.migrations import migrate
from carapace.errors import ConfigError
from carapace.perms import make_private, secure_home

CLI_CHANNEL = "cli"
CLI_PLATFORM_ID = "local"
LOCAL_OWNER = "cli:local"

DEFAULT_INSTRUCTIONS = """\
# {name}

You are {name}, a personal assistant. Answer briefly and helpfully.

This file (`CLAUDE.local.md`) holds this agent group's instructions and notes; edit it
freely. `CLAUDE.md` next to it is composed by the host before each start.
"""


@dataclass
class InitReport:
    home: Path
    migrations: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.migrations or self.created)


def ensure_group_folder(home: Home, folder: str, name: str) -> Path:
    """Create ``groups/<folder>/`` with an instructions file (``CLAUDE.local.md``, NanoClaw's
    role for it) if the folder has none (never overwrites)."""
    path = home.group_dir(folder)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)
    instructions = path / "CLAUDE.local.md"
    if not instructions.exists() and not (path / "CLAUDE.md").exists():
        fd = os.open(instructions, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(DEFAULT_INSTRUCTIONS.format(name=name))
    return path


def check_home(home: Home) -> None:
    """A clear error when the home cannot be used."""
    root = home.root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"home {root} exists and is not a directory")
    try:
        home.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.groups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create home {root}: {exc.strerror or exc}")
    if not os.access(home.data_dir, os.W_OK):
        raise ConfigError(f"home {root} is not writable")


def open_home(home: Home) -> tuple[sqlite3.Connection, list[str]]:
    """Check the home, open the central DB and apply missing migrations."""
    check_home(home)
    conn = open_central(home.central_db, run_migrations=False)
    ran = migrate(conn)
    secure_home(home.root, home.data_dir, home.groups_dir, home.central_db)
    return conn, ran


def init_home(home: Home, *, now: datetime | None = None) -> InitReport:
    home.load_settings()  # a bad carapace.toml is refused before anything is created
    conn, ran = open_home(home)
    report = InitReport(home.root, migrations=ran)
    try:
        if not groups.list_agent_groups(conn):
            g = groups.create_agent_group(conn, "Main", "main", now=now)
            ensure_group_folder(home, g.folder, g.name)
            report.created.append(f"agent group {g.id} (folder groups/main)")
            users.upsert_user(conn, LOCAL_OWNER, CLI_CHANNEL, "Local owner", now=now)
            if users.grant_role(conn, LOCAL_OWNER, "owner", now=now):
                report.created.append(f"owner {LOCAL_OWNER}")
            mg = messaging.get_messaging_group_by_platform(conn, CLI_CHANNEL, CLI_PLATFORM_ID)
            if mg is None:
                mg = messaging.create_messaging_group(
                    conn, CLI_CHANNEL, CLI_PLATFORM_ID, name="cli",
                    unknown_sender_policy="public", now=now,
                )  # fmt: skip
                report.created.append(f"messaging group {mg.id} (cli:local)")
            messaging.create_wiring(
                conn, mg.id, g.id, engage_mode="pattern", engage_pattern=".", now=now
            )
            report.created.append("wiring cli:local → main, destination 'cli'")
        else:
            for g in groups.list_agent_groups(conn):
                if not home.group_dir(g.folder).exists():
                    ensure_group_folder(home, g.folder, g.name)
                    report.created.append(f"folder groups/{g.folder}")
    finally:
        conn.close()
    return report
