"""Rebuilding a conversation from its transcript, ``<agent_dir>/conversations/<session>.jsonl``.

The transcript is append-only JSON lines: every message of every successful turn
(``{"ts", "role", …}``), plus event lines the runner writes — ``{"type": "compaction",
"message": <the summary message>, "kept": n, …}`` and ``{"type": "clear"}``. Replaying it
gives the conversation the runner had: a clear empties it, a compaction replaces all but
the last ``kept`` messages by its summary message. The runner uses this when
``session_state`` has no (readable) conversation, e.g. an ``outbound.db`` restored from an
older copy; lines that are not JSON (a torn last line after SIGKILL) are skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from carapace.runner.providers.base import Message

logger = logging.getLogger(__name__)

MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", "is_error", "compaction")
MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024


def transcript_path(agent_dir: Path, session_id: str) -> Path:
    return agent_dir / "conversations" / f"{session_id}.jsonl"


def rebuild_conversation(agent_dir: Path, session_id: str) -> list[Message] | None:
    """The conversation replayed from the transcript; None when there is no transcript."""
    path = transcript_path(agent_dir, session_id)
    try:
        if path.stat().st_size > MAX_TRANSCRIPT_BYTES:
            logger.warning("transcript %s is too large to replay", path)
            return None
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    conversation: list[Message] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        kind = entry.get("type")
        if kind == "clear":
            conversation = []
        elif kind == "compaction" and isinstance(entry.get("message"), dict):
            kept = entry.get("kept")
            tail = conversation[-kept:] if isinstance(kept, int) and kept > 0 else []
            conversation = [entry["message"], *tail]
        elif isinstance(entry.get("role"), str):
            conversation.append({k: entry[k] for k in MESSAGE_KEYS if k in entry})
    return conversation
