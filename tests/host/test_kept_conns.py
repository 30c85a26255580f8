"""Issue 19: a live session's kept connections close with its runner, but never under a
delivery pass that is still using them (it awaits a read while the runner exits)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from carapace.bootstrap import init_home, open_home
from carapace.config import Home
from carapace.db import groups
from carapace.db.session import init_session_folder
from carapace.db.sessions import create_session
from carapace.host import outbox_reader
from carapace.host.sessions import SessionManager


def test_release_while_in_use_closes_when_given_back(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    db, _ = open_home(home)
    try:
        mgr = SessionManager(home, db)
        ag = groups.list_agent_groups(db)[0].id
        session = create_session(db, ag, None, "t")
        paths = mgr.paths(session)
        init_session_folder(paths)
        mgr.keep(session)
        assert outbox_reader.kept_count() >= 1
        conn = mgr.open_inbound(paths)
        assert conn is mgr.kept(session.id)
        mgr.release(session.id)  # the runner exits while a pass holds the connection
        assert conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0] == 0
        mgr.done_with(conn)
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
        fresh = mgr.open_inbound(paths)  # no runner: a fresh connection, closed when done
        mgr.done_with(fresh)
        with pytest.raises(sqlite3.ProgrammingError):
            fresh.execute("SELECT 1")
    finally:
        db.close()
