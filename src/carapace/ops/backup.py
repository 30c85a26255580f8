"""``carapace backup`` / ``restore``: a consistent copy of a home, taken while it runs.

The central DB and every session DB are copied through SQLite's online backup API (each
copy is one consistent snapshot; a running host and its runners keep writing). The central
DB goes first; the sessions it lists follow, so every session in the copy has its folder.
Group folders and session in/outboxes are agent-written: they are copied without following
a link (``safecopy``), and what was skipped is named in the manifest. ``manifest.json``
lists every file with its SHA-256; ``restore`` verifies all of them before writing anything,
never writes into the home of a running host, and into a non-empty home only when told
(the old ``data/`` and ``groups/`` are then moved aside, not deleted).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from carapace.config import Home
from carapace.errors import ConfigError, ValidationError
from carapace.ops.progress import progress
from carapace.ops.safecopy import copy_tree, sha256_file

FORMAT = 1
MANIFEST = "manifest.json"


class BackupError(ConfigError):
    code = "backup"


@dataclass
class BackupReport:
    dest: Path
    files: int = 0
    bytes: int = 0
    sessions: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snapshot(src: Path, dest: Path) -> None:
    """One consistent copy of a SQLite file (online backup API); never follows a link."""
    st = os.lstat(src)
    if not stat.S_ISREG(st.st_mode):
        raise BackupError(f"{src} is not a regular file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{src.resolve().as_posix()}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(str(dest))
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _sessions(central_copy: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{central_copy.as_posix()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT agent_group_id, id FROM sessions ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(str(a), str(s)) for a, s in rows if _safe_name(str(a)) and _safe_name(str(s))]


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def backup(home: Home, dest: Path, *, on_step: Callable[[str], None] | None = None) -> BackupReport:
    """Copy ``home`` to the new directory ``dest`` (it must not exist, or be empty).
    ``on_step(name)`` is called after each session and group folder (progress, tests)."""
    if not home.central_db.exists():
        raise BackupError(f"{home.root} has no central DB ({home.central_db}); nothing to back up")
    if dest.resolve().is_relative_to(home.root.resolve()):
        raise BackupError(f"{dest} is inside the home {home.root}; back up to somewhere else")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    rep = BackupReport(dest)
    entries: list[dict[str, Any]] = []

    def add(rel: str, kind: str, digest: str | None = None, size: int | None = None) -> None:
        if digest is None or size is None:
            digest, size = sha256_file(dest / rel)
        entries.append({"path": rel, "kind": kind, "sha256": digest, "size": size})
        rep.files += 1
        rep.bytes += size

    # The ingest journal first (host/ingest_journal.py): a message acknowledged before this
    # copy is in it, or was written into its session's file before it left the journal,
    # and the session files are copied after. The central DB next: a journaled row's
    # session existed before the row did.
    journal = home.ingest_journal
    if os.path.lexists(journal):
        _snapshot(journal, dest / "data" / journal.name)
        add(f"data/{journal.name}", "sqlite")
    central = dest / "data" / "v2.db"
    _snapshot(home.central_db, central)
    add("data/v2.db", "sqlite")
    if home.config_file.is_file() and not home.config_file.is_symlink():
        shutil.copyfile(home.config_file, dest / "carapace.toml")
        add("carapace.toml", "file")
    sessions = _sessions(central)
    folders = _group_folders(central)
    with progress("backup", len(sessions) + len(folders)) as advance:
        for ag, sid in sessions:
            src = home.sessions_dir / ag / sid
            rel = f"data/v2-sessions/{ag}/{sid}"
            for name in ("inbound.db", "outbound.db"):
                if os.path.lexists(src / name):
                    try:
                        _snapshot(src / name, dest / rel / name)
                    except (BackupError, sqlite3.Error) as exc:
                        rep.skipped.append({"path": f"{rel}/{name}", "why": str(exc)})
                        continue
                    add(f"{rel}/{name}", "sqlite")
            for box in ("inbox", "outbox"):
                _copy_agent_tree(src / box, dest, f"{rel}/{box}", add, rep)
            rep.sessions += 1
            advance(sid)
            if on_step is not None:
                on_step(sid)
        for folder in folders:
            _copy_agent_tree(home.group_dir(folder), dest, f"groups/{folder}", add, rep)
            advance(folder)
            if on_step is not None:
                on_step(folder)
    manifest = {
        "format": FORMAT, "created": _stamp(), "home": str(home.root),
        "files": entries, "skipped": rep.skipped,
    }  # fmt: skip
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, dest / MANIFEST)
    return rep


def _group_folders(central_copy: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{central_copy.as_posix()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT folder FROM agent_groups ORDER BY folder").fetchall()
    finally:
        conn.close()
    return [str(r[0]) for r in rows if _safe_name(str(r[0]))]


def _copy_agent_tree(src: Path, dest: Path, rel: str, add: Any, rep: BackupReport) -> None:
    res = copy_tree(src, dest / rel)
    for path, digest, size in res.files:
        add(f"{rel}/{path}", "file", digest, size)
    for path, why in res.skipped:
        rep.skipped.append({"path": f"{rel}/{path}", "why": why})


# ---------------------------------------------------------------- restore
@dataclass
class RestoreReport:
    home: Path
    files: int = 0
    moved_aside: Path | None = None


def _read_manifest(src: Path) -> list[dict[str, Any]]:
    try:
        manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{src} has no {MANIFEST}: not a carapace backup")
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read {src / MANIFEST}: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST}: unknown backup format")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BackupError(f"{src / MANIFEST}: no file list")
    for f in files:
        if not isinstance(f, dict) or not _safe_rel(f.get("path")):
            raise BackupError(f"{src / MANIFEST}: bad entry {f!r}")
    return files


def _safe_rel(path: Any) -> bool:
    if not isinstance(path, str) or not path or "\0" in path:
        return False
    p = PurePosixPath(path)
    return (
        not p.is_absolute()
        and all(part not in ("", ".", "..") for part in p.parts)
        and (p.parts[0] in ("data", "groups", "carapace.toml"))
    )


def verify(src: Path) -> list[dict[str, Any]]:
    """Check every file of the backup against its checksum; return the file list."""
    files = _read_manifest(src)
    with progress("verify", len(files)) as advance:
        for f in files:
            try:
                digest, size = sha256_file(src / f["path"])
            except OSError as exc:
                raise BackupError(f"backup file {f['path']} unreadable: {exc}")
            if digest != f.get("sha256") or size != f.get("size"):
                raise BackupError(f"backup file {f['path']} does not match its checksum")
            advance(f["path"])
    return files


def host_running(home: Home) -> bool:
    """True when a host holds the home's lock."""
    if not home.pid_file.exists():
        return False
    with open(home.pid_file) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def restore(src: Path, home: Home, *, force: bool = False) -> RestoreReport:
    if not src.is_dir():
        raise ValidationError(f"{src} is not a directory")
    if host_running(home):
        raise BackupError(f"a host is running for {home.root}; stop it before restoring")
    busy = [p for p in (home.data_dir, home.groups_dir) if p.exists() and any(p.iterdir())]
    if busy and not force:
        raise BackupError(f"{home.root} is not empty; restore into a fresh home, or pass --force")
    files = verify(src)
    rep = RestoreReport(home.root, len(files))
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if busy:
        aside = home.root / f"pre-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        aside.mkdir(mode=0o700)
        for p in busy:
            os.replace(p, aside / p.name)
        if home.config_file.exists():
            os.replace(home.config_file, aside / home.config_file.name)
        rep.moved_aside = aside
    with progress("restore", len(files)) as advance:
        for f in files:
            target = home.root / f["path"]
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".restoring")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            shutil.copyfile(src / f["path"], tmp)
            os.replace(tmp, target)
            advance(f["path"])
    return rep
