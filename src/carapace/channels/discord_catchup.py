"""What the Discord adapter has routed, per channel, so nothing said while the host was down
(or while a routing failed) is lost.

Discord does not redeliver: a dropped connection resumes and gets what it missed, but a new
gateway session (after a host restart, or when Discord invalidates the session) starts with
no backlog. So the adapter remembers, per Discord channel it has heard from, the newest
message it routed and the oldest one whose routing failed, and at every new session reads
the channel's history after that point (up to ``CATCH_UP_LIMIT`` messages per channel) and
routes it like live messages. The router drops what it has already (inbound ids are the
platform's message ids), so reading a message twice is harmless.

The file (``data/discord-cursor.json``) holds ids only; it is replaced atomically, mode
0600. A missing or unreadable file means no catch-up, never an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CATCH_UP_LIMIT = 100
FILE_NAME = "discord-cursor.json"


@dataclass
class Mark:
    guild: int | None  # None: a DM
    routed: int = 0  # the newest message id routed
    failed: int | None = None  # the oldest message id whose routing failed, not yet routed

    def after(self) -> int:
        """Read the history after this id."""
        return self.failed - 1 if self.failed is not None else self.routed


class Cursor:
    """Per channel ``Mark``s, kept in ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.marks: dict[int, Mark] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        for key, v in data.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(v, dict)):
                continue
            guild, routed, failed = v.get("guild"), v.get("routed"), v.get("failed")
            if not isinstance(routed, int) or (guild is not None and not isinstance(guild, int)):
                continue
            self.marks[int(key)] = Mark(guild, routed, failed if isinstance(failed, int) else None)

    def _save(self) -> None:
        if self.path is None:
            return
        data = {str(c): {"guild": m.guild, "routed": m.routed, "failed": m.failed}
                for c, m in self.marks.items()}  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("discord: cannot keep the catch-up cursor in %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def routed(self, channel: int, guild: int | None, message: int) -> None:
        mark = self.marks.setdefault(channel, Mark(guild))
        mark.routed = max(mark.routed, message)
        if mark.failed == message:
            mark.failed = None
        self._save()

    def failed(self, channel: int, guild: int | None, message: int) -> None:
        mark = self.marks.setdefault(channel, Mark(guild))
        mark.failed = message if mark.failed is None else min(mark.failed, message)
        self._save()
