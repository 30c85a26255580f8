"""Copying v1 files into a home without ever overwriting (spec/v1-migration.md §3.6–3.7).

* ``groups/<folder>/``: the whole tree; the top-level ``CLAUDE.md`` (v1's per-group
  instructions and memory) becomes ``CLAUDE.local.md`` as in NanoClaw v2. Unlike NanoClaw,
  nested ``CLAUDE.md`` files and ``.git`` are kept; ``logs/``, ``node_modules/`` and
  ``.DS_Store`` are not (they stay in v1). Symlinks are never followed, only reported.
* ``data/sessions/<folder>/.claude/`` → ``data/v2-sessions/<ag>/.claude-shared/``, and
  ``projects/-workspace-group`` is also copied to ``-workspace-agent`` (v2's working dir).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

SKIP_NAMES = {"logs", "node_modules", ".DS_Store"}


@dataclass
class CopyResult:
    copied: int = 0
    existing: int = 0
    skipped: list[str] = field(default_factory=list)  # 'symlink x', …


def copy_tree(
    src: Path,
    dst: Path,
    *,
    rename_top: dict[str, str] | None = None,
    skip_top: set[str] | None = None,
    write: bool = True,
) -> CopyResult:
    """Copy ``src`` into ``dst`` file by file, keeping every existing target file.

    With ``write=False`` nothing is written; the result says what would be copied.
    """
    result = CopyResult()
    rename_top = rename_top or {}
    skip_top = skip_top or set()

    def walk(s: Path, d: Path, top: bool) -> None:
        try:
            children = sorted(s.iterdir())
        except OSError as exc:
            result.skipped.append(f"unreadable {s}: {exc.strerror or exc}")
            return
        for child in children:
            name = child.name
            if name in SKIP_NAMES or (top and name in skip_top):
                continue
            if child.is_symlink():
                result.skipped.append(f"symlink {child}")
                continue
            target = d / (rename_top.get(name, name) if top else name)
            if child.is_dir():
                walk(child, target, False)
            elif child.is_file():
                if target.exists() or target.is_symlink():
                    result.existing += 1
                    continue
                if write:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(child, target)
                result.copied += 1

    if src.is_dir():
        if write:
            dst.mkdir(parents=True, exist_ok=True)
        walk(src, dst, True)
    return result


def copy_group_folder(src: Path, dst: Path, *, write: bool = True) -> CopyResult:
    return copy_tree(src, dst, rename_top={"CLAUDE.md": "CLAUDE.local.md"}, write=write)


def copy_claude_state(src: Path, shared: Path, *, write: bool = True) -> CopyResult:
    result = copy_tree(src, shared, write=write)
    group = src / "projects" / "-workspace-group"
    if group.is_dir():
        extra = copy_tree(group, shared / "projects" / "-workspace-agent", write=write)
        result.copied += extra.copied
        result.existing += extra.existing
    return result


def pick_transcript(shared: Path, wanted: str | None) -> str | None:
    """The conversation to continue: v1's ``sessions.session_id`` when its transcript exists
    (NanoClaw ignores it and takes the newest file), else the newest transcript."""
    found: list[Path] = []
    for sub in ("-workspace-agent", "-workspace-group"):
        d = shared / "projects" / sub
        if d.is_dir():
            found.extend(p for p in d.glob("*.jsonl") if p.is_file())
    if wanted and any(p.stem == wanted for p in found):
        return wanted
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime, p.name)).stem
