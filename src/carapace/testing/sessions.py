"""Building session folders for tests: the host's side of ``inbound.db``, and readers of
``outbound.db`` (what the host would see).

::

    paths = make_session(tmp_path, destinations=[channel_dest("family", "telegram", "chat-1")],
                         routing=("telegram", "chat-1", None))
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"})
    seq = write_chat(paths, "hello")
    ...
    rows = read_outbound(paths)     # dicts, "content" parsed
    acks = read_acks(paths)         # {message_id: status}
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from carapace.db.connection import connect, transaction
from carapace.db.session import (
    CONVERSATION_END,
    CONVERSATION_KEY,
    CONVERSATION_PREFIX,
    SessionPaths,
    conversation_key,
    init_session_folder,
    insert_message_in,
    open_inbound,
    peek_max_seq,
)
from carapace.jsonutil import dumps
from carapace.timefmt import iso, new_id, utcnow

DEFAULT_AGENT_GROUP = "ag-test"
DEFAULT_SESSION = "sess-test"


def channel_dest(
    name: str, channel_type: str, platform_id: str, display_name: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": display_name,
        "type": "channel",
        "channel_type": channel_type,
        "platform_id": platform_id,
        "agent_group_id": None,
    }


def agent_dest(name: str, agent_group_id: str, display_name: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": display_name,
        "type": "agent",
        "channel_type": None,
        "platform_id": None,
        "agent_group_id": agent_group_id,
    }


def make_session(
    root: Path,
    *,
    agent_group_id: str = DEFAULT_AGENT_GROUP,
    session_id: str = DEFAULT_SESSION,
    destinations: Sequence[dict[str, Any]] = (),
    routing: tuple[str | None, str | None, str | None] | None = None,
) -> SessionPaths:
    """A session folder ``<root>/data/v2-sessions/<ag>/<session>`` made by the data layer."""
    paths = SessionPaths.of(root / "data", agent_group_id, session_id)
    init_session_folder(paths)
    if destinations:
        set_destinations(paths, destinations)
    if routing is not None:
        set_routing(paths, *routing)
    return paths


def make_agent_dir(
    root: Path,
    folder: str = "main",
    *,
    config: dict[str, Any] | None = None,
    mock_script: list[Any] | None = None,
    claude_md: str | None = None,
) -> Path:
    """``<root>/groups/<folder>`` with ``container.json`` (and a mock script if given)."""
    agent_dir = root / "groups" / folder
    agent_dir.mkdir(parents=True, exist_ok=True)
    (agent_dir / "container.json").write_text(json.dumps(config or {}), encoding="utf-8")
    if mock_script is not None:
        (agent_dir / "mock-script.json").write_text(json.dumps(mock_script), encoding="utf-8")
    if claude_md is not None:
        (agent_dir / "CLAUDE.md").write_text(claude_md, encoding="utf-8")
    return agent_dir


def _inbound(paths: SessionPaths) -> sqlite3.Connection:
    return open_inbound(paths)


def set_destinations(paths: SessionPaths, destinations: Iterable[dict[str, Any]]) -> None:
    conn = _inbound(paths)
    try:
        with transaction(conn):
            conn.execute("DELETE FROM destinations")
            for d in destinations:
                conn.execute(
                    "INSERT INTO destinations (name, display_name, type, channel_type, "
                    "platform_id, agent_group_id) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        d["name"],
                        d.get("display_name"),
                        d.get("type", "channel"),
                        d.get("channel_type"),
                        d.get("platform_id"),
                        d.get("agent_group_id"),
                    ),
                )
    finally:
        conn.close()


def set_routing(
    paths: SessionPaths,
    channel_type: str | None,
    platform_id: str | None,
    thread_id: str | None = None,
) -> None:
    conn = _inbound(paths)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO session_routing (id, channel_type, platform_id, "
                "thread_id) VALUES (1, ?, ?, ?)",
                (channel_type, platform_id, thread_id),
            )
    finally:
        conn.close()


def write_message(
    paths: SessionPaths,
    *,
    kind: str,
    content: dict[str, Any] | str,
    id: str | None = None,
    trigger: int = 1,
    channel_type: str | None = None,
    platform_id: str | None = None,
    thread_id: str | None = None,
    timestamp: str | None = None,
    process_after: str | None = None,
    on_wake: int = 0,
    recurrence: str | None = None,
    series_id: str | None = None,
    status: str = "pending",
) -> int:
    """Insert one ``messages_in`` row as the host would; returns its (even) seq."""
    row = {
        "id": id or new_id("msg"),
        "kind": kind,
        "timestamp": timestamp or iso(utcnow()),
        "status": status,
        "process_after": process_after,
        "recurrence": recurrence,
        "series_id": series_id,
        "trigger": trigger,
        "platform_id": platform_id,
        "channel_type": channel_type,
        "thread_id": thread_id,
        "content": content if isinstance(content, str) else dumps(content),
        "on_wake": on_wake,
    }
    conn = _inbound(paths)
    try:
        other = peek_max_seq(paths.outbound, "messages_out")
        return insert_message_in(conn, row, other_max=other)
    finally:
        conn.close()


def write_chat(
    paths: SessionPaths,
    text: str,
    *,
    sender: str = "Alice",
    channel_type: str | None = "telegram",
    platform_id: str | None = "chat-1",
    thread_id: str | None = None,
    id: str | None = None,
    trigger: int = 1,
    timestamp: str | None = None,
    extra: dict[str, Any] | None = None,
    kind: str = "chat",
) -> int:
    content = {"text": text, "sender": sender, "senderId": f"{channel_type}:{sender.lower()}"}
    content.update(extra or {})
    return write_message(
        paths,
        kind=kind,
        content=content,
        id=id,
        trigger=trigger,
        channel_type=channel_type,
        platform_id=platform_id,
        thread_id=thread_id,
        timestamp=timestamp,
    )


def write_question_response(
    paths: SessionPaths, question_id: str, selected: str, *, user_id: str = "telegram:alice"
) -> int:
    return write_message(
        paths,
        kind="system",
        id=f"qr-{question_id}-{int(datetime.now().timestamp() * 1000)}",
        content={
            "type": "question_response",
            "questionId": question_id,
            "selectedOption": selected,
            "userId": user_id,
        },
    )


def mark_delivered(paths: SessionPaths, message_out_id: str, platform_message_id: str) -> None:
    conn = _inbound(paths)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO delivered (message_out_id, platform_message_id, status, "
                "delivered_at) VALUES (?, ?, 'delivered', datetime('now'))",
                (message_out_id, platform_message_id),
            )
    finally:
        conn.close()


def read_outbound(paths: SessionPaths) -> list[dict[str, Any]]:
    """Every ``messages_out`` row in seq order, with ``content`` parsed."""
    conn = connect(paths.outbound, "session", readonly=True)
    try:
        rows = conn.execute("SELECT * FROM messages_out ORDER BY seq").fetchall()
    finally:
        conn.close()
    out: list[dict[str, Any]] = []
    for r in rows:
        d = dict(r)
        d["content"] = json.loads(d["content"])
        out.append(d)
    return out


def read_acks(paths: SessionPaths) -> dict[str, str]:
    conn = connect(paths.outbound, "session", readonly=True)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT message_id, status FROM processing_ack")}
    finally:
        conn.close()


def read_conversation(paths: SessionPaths) -> list[dict[str, Any]] | None:
    """The runner's saved conversation (``runner/conversation_store.py``): its rows, or an
    older runner's single value; None when there is none."""
    conn = connect(paths.outbound, "session", readonly=True)
    try:
        rows = conn.execute(
            "SELECT key, value FROM session_state WHERE key >= ? AND key < ? ORDER BY key",
            (CONVERSATION_PREFIX, CONVERSATION_END),
        ).fetchall()
        legacy = conn.execute(
            "SELECT value FROM session_state WHERE key = ?", (CONVERSATION_KEY,)
        ).fetchone()
    finally:
        conn.close()
    if rows and rows[0][0] == CONVERSATION_PREFIX:
        return [json.loads(value) for _key, value in rows[1:]]
    return json.loads(legacy[0]) if legacy is not None else None


def write_conversation(paths: SessionPaths, messages: list[dict[str, Any]]) -> None:
    """Replace the saved conversation with ``messages`` as another writer would (a command
    the agent ran): rows and a marker whose count no runner wrote."""
    conn = connect(paths.outbound, "session")
    try:
        with transaction(conn):
            conn.execute(
                "DELETE FROM session_state WHERE key = ? OR (key >= ? AND key < ?)",
                (CONVERSATION_KEY, CONVERSATION_PREFIX, CONVERSATION_END),
            )
            rows = [(CONVERSATION_PREFIX, "-1")]
            rows += [(conversation_key(i), dumps(m)) for i, m in enumerate(messages)]
            conn.executemany(
                "INSERT INTO session_state (key, value, updated_at) VALUES (?, ?, ?)",
                [(k, v, iso(utcnow())) for k, v in rows],
            )
    finally:
        conn.close()
