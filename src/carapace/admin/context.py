"""What the admin dispatcher needs from whoever runs it: the host, or the CLI directly.

Inside a running host every admin change goes through the host's own code (``live`` is
True, runners are restarted and woken for real). With no host running, the CLI builds a
direct context over the same DB: the same side effects on files and rows, no runners.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Protocol

from carapace.config import Home, Settings
from carapace.permissions.cards import SessionWriter


class AdminContext(Protocol):
    home: Home
    db: sqlite3.Connection
    settings: Settings
    live: bool

    @property
    def sessions(self) -> SessionWriter:
        """Writes into session folders (the host's ``SessionManager``)."""
        ...

    def now(self) -> datetime:
        """The current time (the host's injectable clock)."""
        ...

    def restart_group(self, agent_group_id: str, message: str | None = None) -> int:
        """Stop the group's running runners (re-woken on the next message, or at once when
        ``message`` is given as an ``on_wake`` note). Returns how many were stopped."""
        ...

    def stop_session(self, session_id: str) -> bool:
        """Stop the session's runner if one runs. Returns whether one was stopped."""
        ...

    def wake_session(self, session_id: str) -> None:
        """Make sure the session's runner looks at its inbound rows soon."""
        ...
