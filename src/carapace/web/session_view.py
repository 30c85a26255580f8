"""One session's messages in and out, in seq order, with their delivery state and what the
session's model calls cost. ``inbound.db`` is the host's file (read read-only in a worker
thread); ``outbound.db`` is the agent's, read only through ``host/outbox_reader.py`` on
the host's outbox reader pool (schema-checked, bounded)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from carapace.db.connection import connect
from carapace.db.session import SessionPaths
from carapace.db.sessions import get_session
from carapace.errors import CarapaceError
from carapace.host.outbox_reader import read_rows
from carapace.jsonutil import loads_or
from carapace.proxy.prices import PriceTable
from carapace.web.html import esc, pager, table

if TYPE_CHECKING:
    from carapace.web.app import WebApp

PAGE = 100


def _inbound(
    paths: SessionPaths, page_no: int
) -> tuple[list[dict[str, Any]], dict[str, str], bool]:
    if not paths.inbound.exists():
        return [], {}, False
    conn = connect(paths.inbound, "session", readonly=True)
    try:
        rows = conn.execute(
            "SELECT id, seq, kind, timestamp, status, tries, trigger, content FROM messages_in "
            "ORDER BY seq DESC LIMIT ? OFFSET ?",
            (PAGE + 1, (page_no - 1) * PAGE),
        ).fetchall()
        delivered = {str(r[0]): str(r[1]) for r in conn.execute(
            "SELECT message_out_id, status FROM delivered")}  # fmt: skip
    finally:
        conn.close()
    return [dict(r) for r in rows[:PAGE]], delivered, len(rows) > PAGE


def _text(content: Any) -> str:
    doc = loads_or(content, content) if isinstance(content, str) else content
    if isinstance(doc, dict):
        for key in ("text", "prompt", "markdown", "question"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
        return str(doc)[:500]
    return str(doc)


async def render(app: WebApp, session_id: str, page_no: int) -> str | None:
    host = app.host
    s = get_session(host.db, session_id)
    if s is None:
        return None
    paths = SessionPaths.of(host.home.data_dir, s.agent_group_id, s.id)
    ins, delivered, more = await asyncio.to_thread(_inbound, paths, page_no)
    low = min((r["seq"] for r in ins), default=0)
    high = max((r["seq"] for r in ins), default=0) if page_no > 1 else None
    outs: list[dict[str, Any]] = []
    note = ""
    if paths.outbound.exists():
        try:
            outs = await host.delivery.outbox.call(read_rows, paths.outbound, low - 1, 500)
        except (CarapaceError, OSError, TimeoutError) as exc:
            note = f'<p class="error">outbound.db not read: {esc(exc)}</p>'
    if high is not None:
        outs = [o for o in outs if int(o["seq"]) < high]
    merged: list[tuple[int, list[str]]] = []
    for r in ins:
        merged.append((int(r["seq"]), [esc(r["seq"]), "in", esc(r["kind"]), esc(r["timestamp"]),
                                       esc(_text(r["content"])[:2000]),
                                       esc(f"{r['status']} (tries {r['tries']})")]))  # fmt: skip
    for o in outs:
        state = delivered.get(str(o["id"]), "not delivered yet")
        merged.append((int(o["seq"]), [esc(o["seq"]), "out", esc(o["kind"]), esc(o["timestamp"]),
                                       esc(_text(o["content"])[:2000]), esc(state)]))  # fmt: skip
    merged.sort(key=lambda x: x[0])
    cost = _cost(app, s.agent_group_id, s.id)
    head = (f'<p class="stats"><span>Agent group {esc(s.agent_group_id)}</span> '
            f"<span>Status {esc(s.status)}</span> <span>Runner "
            f'{"running" if host.pool.is_running(s.id) else esc(s.container_status or "stopped")}'
            f"</span> <span>Last activity {esc(s.last_active or '—')}</span> "
            f"<span>{cost}</span></p>")  # fmt: skip
    return (head + note + table(["Seq", "Dir", "Kind", "Time", "Content", "State"],
                                [cells for _, cells in merged], caption="Messages, oldest first",
                                empty="No messages.")
            + pager(f"/sessions/{session_id}", {}, page_no, more))  # fmt: skip


def _cost(app: WebApp, agent_group_id: str, session_id: str) -> str:
    prices = PriceTable.from_settings(app.host.settings.extra)
    total, calls, unpriced, tokens = 0.0, 0, 0, 0
    with contextlib.suppress(Exception):
        for r in app.host.db.execute(
            "SELECT provider, COALESCE(model,''), COUNT(*), SUM(input_tokens), SUM(output_tokens),"
            " SUM(cache_read_tokens), SUM(cache_write_tokens) FROM carapace_usage "
            "WHERE agent_group_id=? AND session_id=? GROUP BY provider, model",
            (agent_group_id, session_id),
        ):
            calls += r[2]
            tokens += (r[3] or 0) + (r[4] or 0)
            c = prices.cost(r[0], r[1], r[3] or 0, r[4] or 0, r[5] or 0, r[6] or 0)
            if c is None:
                unpriced += r[2]
            else:
                total += c
    if not calls:
        return "No model calls recorded"
    extra = f", {unpriced} unpriced" if unpriced else ""
    return f"{calls} model call(s), {tokens:,} tokens, ${total:.4f}{extra}"
