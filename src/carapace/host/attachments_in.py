"""Attachments a person sends: their base64 ``data`` decoded into the session's ``inbox/``.

Spec/host.md §3.8. A routed message's content may carry ``attachments`` with inline data;
each is written to ``inbox/<message id>/<name>`` (a plain basename, never over an existing
file, never through a link) and the content then names the file instead of holding it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from datetime import datetime
from pathlib import Path

from carapace.jsonutil import dumps, loads_or

logger = logging.getLogger(__name__)

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
_MIME_EXT = {
    "image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
    "application/pdf": "pdf", "text/plain": "txt", "audio/ogg": "ogg", "audio/mpeg": "mp3",
    "video/mp4": "mp4", "application/json": "json", "text/csv": "csv",
}  # fmt: skip
_TYPE_EXT = {"image": "jpg", "photo": "jpg", "sticker": "webp", "voice": "ogg", "audio": "mp3",
             "video": "mp4", "animation": "mp4"}  # fmt: skip


def safe_name(name: str) -> bool:
    """NanoClaw's ``isSafeAttachmentName``: a plain basename."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def extract_attachments(inbox: Path, message_id: str, content: str, now: datetime) -> str:
    """Decode base64 ``data`` of attachments into ``inbox/<message id>/``; the content with
    each decoded attachment's ``name`` and ``localPath`` instead of its data."""
    if "attachments" not in content and "\\" not in content:
        return content  # no such key, even escaped: not decoded (every routed message)
    doc = loads_or(content, None)
    if not isinstance(doc, dict) or not isinstance(doc.get("attachments"), list):
        return content
    if not safe_name(message_id):
        return content
    changed = False
    for att in doc["attachments"]:
        if not isinstance(att, dict) or not isinstance(att.get("data"), str):
            continue
        try:
            data = base64.b64decode(att["data"], validate=False)
        except (binascii.Error, ValueError):
            continue
        if len(data) > MAX_ATTACHMENT_BYTES:
            logger.warning("attachment over size limit dropped (message %s)", message_id)
            att.pop("data", None)
            changed = True
            continue
        name = att.get("name") if isinstance(att.get("name"), str) else ""
        ms = int(now.timestamp() * 1000)
        if not name:
            ext = _MIME_EXT.get(str(att.get("mimeType"))) or _TYPE_EXT.get(str(att.get("type")))
            name = f"attachment-{ms}" + (f".{ext}" if ext else "")
        if not safe_name(name):
            name = f"attachment-{ms}"
        target_dir = inbox / message_id
        if target_dir.is_symlink() or (target_dir.exists() and not target_dir.is_dir()):
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        if not str(target_dir.resolve()).startswith(str(inbox.resolve()) + os.sep):
            continue
        try:
            with open(target_dir / name, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            logger.warning("attachment %s exists; skipped (message %s)", name, message_id)
            continue
        att["name"] = name
        att["localPath"] = f"inbox/{message_id}/{name}"
        del att["data"]
        changed = True
    return dumps(doc) if changed else content
