"""Files an agent attaches to an outbound row: ``outbox/<row id>/<name>`` (spec §4.3 step 8).

The row id and every file name come from ``outbound.db`` (the agent writes it), and the
outbox is the agent's folder: both are attacker input (DESIGN §5). So:

* the row id and each name must be plain names (``safefs.plain_name``); a row id that is
  not one refuses the row (a ``DeliveryError`` the agent is told about);
* files are opened through ``safefs`` beneath the session folder (no link followed, never
  outside it, ``fstat``: regular files only, size-bounded), never by ``exists()``-then-open;
* a refused file is left out and named in a :class:`FileRefusal`, which the caller tells
  the agent; the copy into another session's inbox writes beneath that session's folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from carapace import safefs
from carapace.channels.base import OutboundFile
from carapace.db.session import SessionPaths
from carapace.errors import DeliveryError

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_TOTAL_FILE_BYTES = 50 * 1024 * 1024


@dataclass
class OutboxFiles:
    files: list[OutboundFile] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line per refused file

    def note(self, what: str) -> str | None:
        """The sentence told to the agent, or None when nothing was refused."""
        if not self.refused:
            return None
        return f"Files of your message {what} were not sent: " + "; ".join(self.refused)


def row_folder(row_id: object) -> str:
    """``outbox/<row id>`` as a relative path, or ``DeliveryError`` (told to the agent)."""
    try:
        return "outbox/" + safefs.plain_name(row_id, "outbound row id")
    except safefs.UnsafePathError as exc:
        raise DeliveryError(f"files refused: {exc}", permanent=True) from None


def read_outbox_files(paths: SessionPaths, row_id: object, names: list[Any]) -> OutboxFiles:
    """The row's attached files, read link-free beneath the session folder."""
    result = OutboxFiles()
    folder = row_folder(row_id)
    total = 0
    try:
        root = safefs.open_root(paths.root)
    except safefs.UnsafePathError as exc:
        result.refused.append(str(exc))
        return result
    try:
        for name in names:
            try:
                plain = safefs.plain_name(name)
                limit = min(MAX_FILE_BYTES, MAX_TOTAL_FILE_BYTES - total)
                data = safefs.read_beneath(root, f"{folder}/{plain}", max(limit, 0))
            except safefs.UnsafePathError as exc:
                result.refused.append(str(exc))
                continue
            except FileNotFoundError:
                result.refused.append(f"{name!r} is not in the outbox")
                continue
            except OSError as exc:
                result.refused.append(f"{name!r}: {exc.strerror or exc}")
                continue
            total += len(data)
            result.files.append(OutboundFile(plain, data))
    finally:
        os.close(root)
    for line in result.refused:
        logger.warning("outbox of %s, row %r: %s", paths.root.name, row_id, line)
    return result


def copy_to_inbox(
    src: SessionPaths, row_id: object, names: list[Any], dst: SessionPaths, message_id: str
) -> tuple[list[dict[str, str]], OutboxFiles]:
    """Agent-to-agent: copy the row's files into ``<dst>/inbox/<message_id>/``; returns the
    attachments for the new inbound row and what was read (refusals included)."""
    read = read_outbox_files(src, row_id, names)
    if not read.files:
        return [], read
    inbox_rel = f"inbox/{safefs.plain_name(message_id, 'message id')}"
    safefs.mkdirs_beneath(dst.root, inbox_rel)
    atts: list[dict[str, str]] = []
    for f in read.files:
        safefs.write_beneath(dst.root, f"{inbox_rel}/{f.name}", f.data)
        atts.append({"name": f.name, "filename": f.name, "type": "file",
                     "localPath": f"{inbox_rel}/{f.name}"})  # fmt: skip
    return atts, read


def clear_outbox(paths: SessionPaths, row_id: object) -> None:
    """Remove ``outbox/<row id>/`` and its plain entries; links are unlinked, not followed."""
    try:
        name = safefs.plain_name(row_id)
        root = safefs.open_root(paths.root)
    except safefs.UnsafePathError:
        return
    try:
        try:
            fd = safefs.open_beneath(root, "outbox", os.O_RDONLY | os.O_DIRECTORY)
        except (OSError, safefs.UnsafePathError):
            return
        try:
            _remove_tree(fd, name)
        finally:
            os.close(fd)
    finally:
        os.close(root)


def _remove_tree(parent: int, name: str, depth: int = 0) -> None:
    try:
        os.unlink(name, dir_fd=parent)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM) or depth > 8:
            logger.warning("could not clear outbox entry %r: %s", name, exc)
            return
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent)  # fmt: skip
    except OSError as exc:
        logger.warning("could not clear outbox entry %r: %s", name, exc)
        return
    try:
        for entry in os.listdir(fd):
            _remove_tree(fd, entry, depth + 1)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent)
