"""Rebuilding a conversation from its transcript, ``<session_dir>/conversations/<session>.jsonl``.

Transcripts are per session, in the session folder: the agent group's folder is shared by
all its sessions (and mounted into each of their sandboxes), so a transcript there could be
read by another session's agent. Transcripts written by older versions at
``<agent_dir>/conversations/<session>.jsonl`` are still read when the new one is missing;
the host moves them into the session folder before it starts a runner
(``adopt_legacy_transcript``).

The transcript is append-only JSON lines: every message of every successful turn
(``{"ts", "role", …}``), plus event lines the runner writes — ``{"type": "compaction",
"message": <the summary message>, "kept": n, …}`` and ``{"type": "clear"}``. Replaying it
gives the conversation the runner had: a clear empties it, a compaction replaces all but
the last ``kept`` messages by its summary message. The runner uses this when
``session_state`` has no (readable) conversation, e.g. an ``outbound.db`` restored from an
older copy; lines that are not JSON (a torn last line after SIGKILL) are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from carapace import safefs
from carapace.log import get_logger
from carapace.runner.providers.base import Message

logger = get_logger(__name__)

MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", "is_error", "compaction")
MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024


TRANSCRIPT_DIR = "conversations"


def transcript_path(session_dir: Path, session_id: str) -> Path:
    return session_dir / TRANSCRIPT_DIR / f"{session_id}.jsonl"


def legacy_transcript_path(agent_dir: Path, session_id: str) -> Path:
    """Where transcripts were written before they became per session (shared folder)."""
    return agent_dir / TRANSCRIPT_DIR / f"{session_id}.jsonl"


def rebuild_conversation(
    session_dir: Path, session_id: str, agent_dir: Path | None = None
) -> list[Message] | None:
    """The conversation replayed from the transcript (the session's own, else a legacy one
    in ``agent_dir``); None when there is no transcript."""
    path = transcript_path(session_dir, session_id)
    if agent_dir is not None and not path.exists():
        path = legacy_transcript_path(agent_dir, session_id)
    try:
        if path.stat().st_size > MAX_TRANSCRIPT_BYTES:
            logger.warning("transcript %s is too large to replay", path)
            return None
        # lines end at "\n" only: ``splitlines`` also cuts at U+2028, U+0085 and others,
        # which the JSON of a message carries as they are (a person's text, an agent's)
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
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


def adopt_legacy_transcript(agent_dir: Path, session_dir: Path, session_id: str) -> bool:
    """Host side, before a start: move a transcript an older version left in the shared
    group folder into the session folder, so other sessions' agents no longer see it.

    The group folder is the agent's, so the old file is read through ``safefs`` (no link
    followed, regular file, size-bounded); an existing per-session transcript wins."""
    rel = f"{TRANSCRIPT_DIR}/{safefs.plain_name(session_id + '.jsonl', 'session id')}"
    try:
        data = safefs.read_beneath(agent_dir, rel, MAX_TRANSCRIPT_BYTES)
    except FileNotFoundError:
        return False
    except (OSError, safefs.UnsafePathError) as exc:
        logger.warning("legacy transcript of %s not adopted: %s", session_id, exc)
        return False
    safefs.mkdirs_beneath(session_dir, TRANSCRIPT_DIR)
    target = transcript_path(session_dir, session_id)
    if not target.exists():
        safefs.write_beneath(session_dir, rel, data)
    try:
        folder = safefs.open_beneath(agent_dir, TRANSCRIPT_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, safefs.UnsafePathError):
        return True
    try:
        with contextlib.suppress(OSError):
            os.unlink(rel.split("/", 1)[1], dir_fd=folder)
    finally:
        os.close(folder)
    logger.info("transcript of session %s moved into its session folder", session_id)
    return True
