"""``carapace status``: one screen about a home, read without a host's help.

Everything is read from disk (the central DB read-only, the host's lock, the log file), so
it answers the same whether the host is up or not: host up (the home's lock is held),
runner backend (as configured; ``auto`` shows whether bubblewrap is there), channels,
sessions with a runner / with work due and no runner, pending approvals, the last errors
of ``<home>/logs/carapace.log`` and today's model usage (when usage is recorded).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import deque
from datetime import UTC, datetime
from typing import Any

from carapace.config import Home
from carapace.ops.backup import host_running

MAX_ERRORS = 5


def _ro(home: Home) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{home.central_db.resolve().as_posix()}?mode=ro", uri=True,
                           timeout=5)  # fmt: skip


def _has(conn: sqlite3.Connection, table: str) -> bool:
    q = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
    return conn.execute(q, (table,)).fetchone() is not None


def _count(conn: sqlite3.Connection, table: str, where: str = "") -> int:
    if not _has(conn, table):
        return 0
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0])


def last_errors(home: Home, n: int = MAX_ERRORS) -> list[str]:
    log = home.root / "logs" / "carapace.log"
    if not log.is_file() or log.is_symlink():
        return []
    found: deque[str] = deque(maxlen=n)
    with open(log, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            text = line.rstrip("\n")
            if text.startswith("{"):
                try:
                    rec = json.loads(text)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("level") in ("error", "critical"):
                    found.append(f"{rec.get('ts', '')} {rec.get('msg', '')}")
            elif " ERROR " in text or " CRITICAL " in text:
                found.append(text)
    return list(found)


def collect(home: Home, *, now: datetime | None = None) -> dict[str, Any]:
    when = now or datetime.now(UTC)
    settings = home.load_settings()
    up = host_running(home)
    info: dict[str, Any] = {"home": str(home.root), "host_up": up}
    if up and home.pid_file.exists():
        info["pid"] = home.pid_file.read_text().strip()
    backend = settings.runner_backend
    if backend in ("auto", "bwrap"):
        backend += " (bubblewrap " + ("found)" if shutil.which(settings.bwrap) else "missing)")
    info["backend"] = backend
    info["channels"] = {"cli": "listening" if up and home.cli_socket.exists() else "down"}
    from carapace.channels.registry import read_states

    for channel_type, st in sorted(read_states(home).items()):  # other adapters, as recorded
        if channel_type != "cli" and st.get("state") not in (None, "not configured"):
            state = str(st.get("state")) if up or st.get("state") == "failed" else "down"
            info["channels"][channel_type] = state
    info["errors"] = last_errors(home)
    if not home.central_db.exists():
        info["note"] = "no central DB: run `carapace init`"
        return info
    conn = _ro(home)
    try:
        chats: dict[str, int] = {}
        if _has(conn, "messaging_groups"):
            q = "SELECT channel_type, COUNT(*) FROM messaging_groups GROUP BY channel_type"
            chats = {str(c): int(n) for c, n in conn.execute(q)}
        info["chats_by_channel"] = chats
        info["sessions"] = {
            "active": _count(conn, "sessions", "WHERE COALESCE(status, 'active')='active'"),
            "live": _count(conn, "sessions", "WHERE container_status='running'") if up else 0,
        }
        if _has(conn, "carapace_session_work"):
            due = conn.execute(
                "SELECT COUNT(*) FROM carapace_session_work w JOIN sessions s ON s.id=w.session_id "
                "WHERE w.next_due <= ? AND s.container_status != 'running'",
                (when.strftime("%Y-%m-%dT%H:%M:%S.999Z"),),
            ).fetchone()[0]
            info["sessions"]["queued"] = int(due)
        info["approvals_pending"] = (
            _count(conn, "pending_approvals", "WHERE status='pending'")
            + _count(conn, "pending_sender_approvals")
            + _count(conn, "pending_channel_approvals")
        )
        if _has(conn, "carapace_usage"):
            cols = {r[1] for r in conn.execute("PRAGMA table_info(carapace_usage)")}
            cost = "SUM(cost_usd)" if "cost_usd" in cols else "NULL"
            row = conn.execute(
                f"SELECT COUNT(*), SUM(input_tokens), SUM(output_tokens), {cost} "
                "FROM carapace_usage WHERE at >= ?", (when.strftime("%Y-%m-%d"),),
            ).fetchone()  # fmt: skip
            info["usage_today"] = {"calls": int(row[0]), "input_tokens": int(row[1] or 0),
                                   "output_tokens": int(row[2] or 0),
                                   "cost_usd": row[3]}  # fmt: skip
    finally:
        conn.close()
    return info


def render(info: dict[str, Any]) -> str:
    lines = [f"carapace status: {info['home']}"]
    up = info.get("host_up")
    lines.append(f"  host:       {'up (pid ' + str(info.get('pid', '?')) + ')' if up else 'down'}")
    lines.append(f"  backend:    {info.get('backend')}")
    chans = ", ".join(f"{k} {v}" for k, v in info.get("channels", {}).items())
    chats = ", ".join(f"{k} {v}" for k, v in info.get("chats_by_channel", {}).items()) or "none"
    lines.append(f"  channels:   {chans}; chats: {chats}")
    if "note" in info:
        lines.append(f"  {info['note']}")
    s = info.get("sessions")
    if s is not None:
        lines.append(f"  sessions:   {s['active']} active, {s['live']} with a runner, "
                     f"{s.get('queued', 0)} with work due and no runner")  # fmt: skip
        lines.append(f"  approvals:  {info.get('approvals_pending', 0)} pending")
    u = info.get("usage_today")
    if u is not None:
        cost = f", ${u['cost_usd']:.2f}" if u.get("cost_usd") is not None else ""
        lines.append(f"  today:      {u['calls']} model call(s), {u['input_tokens']} in / "
                     f"{u['output_tokens']} out tokens{cost}")  # fmt: skip
    else:
        lines.append("  today:      no usage records")
    errors = info.get("errors") or []
    lines.append(f"  last errors ({len(errors)}):" if errors else "  last errors: none logged")
    lines.extend(f"    {e}" for e in errors)
    return "\n".join(lines)
