"""What the host's ingest journal holds, read by another connection (tests, benchmarks)."""

from __future__ import annotations

import json
import sqlite3

from carapace.config import Home


def journal_rows(home: Home) -> list[tuple[str, str]]:
    """(session id, message id) of every row ``data/ingest.db`` holds, oldest first."""
    path = home.ingest_journal
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT session_id, row FROM pending ORDER BY n").fetchall()
    finally:
        conn.close()
    return [(sid, json.loads(text)["id"]) for sid, text in rows]
