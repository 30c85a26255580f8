"""The admin context with no host running: the same DB changes and file side effects.

Destination changes are projected into the session DBs of the affected group at once
(``project_group``); there are no runners to restart, stop or wake.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from types import TracebackType

from carapace.bootstrap import open_home
from carapace.config import Home, Settings
from carapace.db.destinations import add_projection_hook, remove_projection_hook
from carapace.db.projection import project_group
from carapace.errors import ConfigError
from carapace.host.sessions import SessionManager
from carapace.timefmt import utcnow


class DirectContext:
    """An ``AdminContext`` over the home's DB, for when no host is running."""

    live = False

    def __init__(self, home: Home, db: sqlite3.Connection, settings: Settings) -> None:
        self.home = home
        self.db = db
        self.settings = settings
        self.sessions = SessionManager(home, db)
        add_projection_hook(self._project)

    def _project(self, db: sqlite3.Connection, agent_group_id: str) -> None:
        if db is self.db:  # hooks are process-wide; only project this home's changes
            project_group(db, self.home.data_dir, agent_group_id)

    def now(self) -> datetime:
        return utcnow()

    def restart_group(self, agent_group_id: str, message: str | None = None) -> int:
        return 0

    def stop_session(self, session_id: str) -> bool:
        return False

    def wake_session(self, session_id: str) -> None:
        return None

    def close(self) -> None:
        remove_projection_hook(self._project)
        self.db.close()

    def __enter__(self) -> DirectContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def direct_context(home: Home) -> DirectContext:
    """Open the home's DB (applying missing migrations); the home must exist already."""
    if not home.central_db.exists():
        raise ConfigError(
            f"no carapace home at {home.root} (run 'carapace init --home {home.root}')"
        )
    conn, _ = open_home(home)
    try:
        settings = home.load_settings()
    except ConfigError:
        conn.close()
        raise
    return DirectContext(home, conn, settings)
