"""NanoClaw v2's file roles in a group folder, so a home round-trips between the two.

NanoClaw v2 regenerates ``groups/<folder>/CLAUDE.md`` before every spawn as a *composed*
file (a list of imports), keeps the group's own instructions and memory in
``CLAUDE.local.md``, keeps host-written fragments in ``.claude-fragments/``, and its
one-time start-up cutover deletes ``groups/global/``. carapace uses the same roles:

* ``CLAUDE.local.md``: the group's own instructions and memory (operator and agent);
* ``CLAUDE.md``: composed by the host before each runner start (first line
  ``COMPOSED_MARKER``), importing the fragments; edits there are not kept;
* ``.claude-fragments/shared.md``: a copy of the shared memory (``groups/global/CLAUDE.md``)
  written into each group at each start, so the shared memory survives NanoClaw deleting
  ``groups/global/``; carapace restores ``groups/global/CLAUDE.md`` from the newest copy at
  host start (``restore_global``).

Migration is lazy and loses nothing: an operator-written ``CLAUDE.md`` (no marker) is moved
into ``CLAUDE.local.md`` (put first when that file exists) before the composed file is
written. Every read and write in the group folder goes through ``carapace.safefs``: the
folder is the agent's, so no link there is ever followed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from carapace import safefs
from carapace.config import Home
from carapace.runner.prompt import COMPOSED_MARKER

logger = logging.getLogger(__name__)

FRAGMENTS = ".claude-fragments"
SHARED_FRAGMENT = "shared.md"
MAX_FILE = 1 << 20
GLOBAL = "global"


def _read(root: Path | int, rel: str) -> str | None:
    try:
        return safefs.read_beneath(root, rel, MAX_FILE).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except (OSError, safefs.UnsafePathError) as exc:
        logger.warning("%s/%s not used: %s", root, rel, exc)
        return None


def is_composed(text: str | None) -> bool:
    """carapace's composed file (marker), or NanoClaw's: nothing but ``@import`` lines
    (and blank or ``<!-- -->`` comment lines), i.e. no text of its own."""
    if text is None:
        return False
    if text.lstrip().startswith(COMPOSED_MARKER):
        return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return bool(lines) and all(
        line.startswith("@") or (line.startswith("<!--") and line.endswith("-->")) for line in lines
    )


def composed_text(fragments: list[str]) -> str:
    lines = [COMPOSED_MARKER, ""]
    lines += [f"@./{FRAGMENTS}/{name}" for name in fragments]
    return "\n".join(lines) + "\n"


def migrate_group(agent_dir: Path) -> bool:
    """Move an operator-written ``CLAUDE.md`` into ``CLAUDE.local.md``; True when moved."""
    old = _read(agent_dir, "CLAUDE.md")
    if old is None or is_composed(old) or not old.strip():
        return False
    local = _read(agent_dir, "CLAUDE.local.md")
    merged = old if local is None or not local.strip() else f"{old.rstrip()}\n\n{local}"
    safefs.write_beneath(agent_dir, "CLAUDE.local.md", merged.encode(), 0o600)
    # Until the composed file replaces it, the old text stays where it was: nothing is lost
    # if the write below fails.
    logger.info("moved %s/CLAUDE.md into CLAUDE.local.md (NanoClaw's file roles)", agent_dir)
    return True


def _fragments_dir(agent_dir: Path) -> int | None:
    """A descriptor on ``<agent>/.claude-fragments`` (created; never through a link)."""
    root = safefs.open_root(agent_dir)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(FRAGMENTS, 0o700, dir_fd=root)
        try:
            return safefs.open_beneath(root, FRAGMENTS, os.O_RDONLY | os.O_DIRECTORY)
        except (OSError, safefs.UnsafePathError) as exc:
            logger.warning("%s/%s not used: %s", agent_dir, FRAGMENTS, exc)
            return None
    finally:
        os.close(root)


def compose_group(home: Home, agent_dir: Path) -> None:
    """Before a runner starts: migrate, copy the shared memory into the group's fragments,
    write the composed ``CLAUDE.md``."""
    migrate_group(agent_dir)
    fragments: list[str] = []
    shared = _read(home.groups_dir, f"{GLOBAL}/CLAUDE.md")
    if shared is not None and agent_dir.name != GLOBAL:
        fd = _fragments_dir(agent_dir)
        if fd is not None:
            try:
                safefs.write_beneath_if_changed(fd, SHARED_FRAGMENT, shared.encode(), 0o600)
                fragments.append(SHARED_FRAGMENT)
            finally:
                os.close(fd)
    text = composed_text(fragments).encode()
    safefs.write_beneath_if_changed(agent_dir, "CLAUDE.md", text, 0o600)


def restore_global(home: Home) -> bool:
    """At host start: ``groups/global/CLAUDE.md`` back from the newest group copy when
    NanoClaw deleted it; True when restored."""
    if _read(home.groups_dir, f"{GLOBAL}/CLAUDE.md") is not None or not home.groups_dir.is_dir():
        return False
    best: tuple[float, str] | None = None
    for folder in safefs.list_beneath(home.groups_dir):
        if folder == GLOBAL:
            continue
        rel = f"{folder}/{FRAGMENTS}/{SHARED_FRAGMENT}"
        try:
            fd = safefs.open_beneath(home.groups_dir, rel, os.O_RDONLY | os.O_NONBLOCK)
        except (OSError, safefs.UnsafePathError):
            continue
        try:
            mtime = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        text = _read(home.groups_dir, rel)
        if text is not None and (best is None or mtime > best[0]):
            best = (mtime, text)
    if best is None:
        return False
    gdir = home.groups_dir / GLOBAL
    with contextlib.suppress(FileExistsError):
        os.mkdir(gdir, 0o700)
    safefs.write_beneath(home.groups_dir, f"{GLOBAL}/CLAUDE.md", best[1].encode(), 0o600)
    logger.info("restored %s/CLAUDE.md from a group's shared-memory copy", gdir)
    return True


def nanoclaw_rewrites(home: Home) -> list[tuple[str, str]]:
    """``(path, what NanoClaw would do)`` for ``doctor``."""
    out: list[tuple[str, str]] = []
    if not home.groups_dir.is_dir():
        return out
    for folder in safefs.list_beneath(home.groups_dir):
        if folder == GLOBAL:
            out.append((f"groups/{GLOBAL}/", "deleted at NanoClaw's first start (a copy is kept "
                        f"in each group's {FRAGMENTS}/{SHARED_FRAGMENT})"))  # fmt: skip
            continue
        text = _read(home.groups_dir, f"{folder}/CLAUDE.md")
        if text is None:
            continue
        if is_composed(text):
            what = "regenerated (already composed here: no text of its own)"
            out.append((f"groups/{folder}/CLAUDE.md", what))
        else:
            out.append((f"groups/{folder}/CLAUDE.md", "regenerated: operator text not yet moved "
                        "to CLAUDE.local.md would be lost (carapace moves it at next start)"))  # fmt: skip
    return out


def log_unavailable_providers(db: sqlite3.Connection) -> int:
    """At host start: an error line for each agent group whose provider cannot be created
    here (its SDK is not installed). Such a group is never served by another provider: each
    of its messages is answered with the reason (``carapace doctor``: provider-unavailable).
    Returns how many were logged."""
    from carapace.runner.providers import unavailable_reason

    n = 0
    rows = db.execute(
        "SELECT g.folder, c.provider FROM agent_groups g "
        "JOIN container_configs c ON c.agent_group_id = g.id ORDER BY g.folder"
    ).fetchall()
    for folder, provider in rows:
        why = unavailable_reason(provider) if isinstance(provider, str) else None
        if why is not None:
            logger.error("agent group %s: provider %s cannot run here: %s", folder, provider, why)
            n += 1
    return n
