"""Copying agent-written trees without following a link (group folders, session in/outboxes).

Every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``; every
file with ``O_NOFOLLOW | O_NONBLOCK`` and then checked by ``fstat`` to be a regular file, so
a symlink, a FIFO or a device planted by an agent is skipped (and named), never read
through or blocked on.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


@dataclass
class CopyResult:
    files: list[tuple[str, str, int]] = field(default_factory=list)  # rel path, sha256, size
    skipped: list[tuple[str, str]] = field(default_factory=list)  # rel path, why


def _walk(dir_fd: int, rel: str, out: CopyResult) -> Iterator[tuple[int, str, str]]:
    """(parent fd, name, rel path) of every regular-looking entry, depth first."""
    with os.scandir(dir_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        path = f"{rel}/{e.name}" if rel else e.name
        if e.is_symlink():
            out.skipped.append((path, "symlink"))
        elif e.is_dir(follow_symlinks=False):
            try:
                fd = os.open(e.name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                out.skipped.append((path, f"cannot open: {exc.strerror}"))
                continue
            try:
                yield from _walk(fd, path, out)
            finally:
                os.close(fd)
        elif e.is_file(follow_symlinks=False):
            yield dir_fd, e.name, path
        else:
            out.skipped.append((path, "not a regular file"))


def copy_tree(src: Path, dest: Path, *, on_file: Callable[[str], None] | None = None) -> CopyResult:
    """Copy the regular files under ``src`` to ``dest`` (relative paths kept)."""
    out = CopyResult()
    try:
        root = os.open(src, _DIR_FLAGS)
    except FileNotFoundError:
        return out
    except OSError as exc:
        out.skipped.append((".", f"cannot open: {exc.strerror}"))
        return out
    try:
        for parent, name, rel in _walk(root, "", out):
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
            except OSError as exc:
                out.skipped.append((rel, f"cannot open: {exc.strerror}"))
                continue
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    out.skipped.append((rel, "not a regular file"))
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = copy_stream(fh.fileno(), target)
            out.files.append((rel, digest, size))
            if on_file is not None:
                on_file(rel)
    finally:
        os.close(root)
    return out


def copy_stream(fd: int, target: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(target, "xb") as dst:
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, _FILE_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest(), size
