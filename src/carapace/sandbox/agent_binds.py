"""The host-owned entries of an agent group's folder that the sandbox shows read-only
(``container.json``, ``CLAUDE.md``, ``.claude-fragments``), opened for bwrap's
``--ro-bind-fd`` without following any link: the folder is the agent's, so anything in it
may have been planted (docs/sandbox.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from carapace import safefs
from carapace.errors import ConfigError

logger = logging.getLogger(__name__)

AGENT_READ_ONLY = ("container.json", "CLAUDE.md", ".claude-fragments")
PROJECT_SETTINGS = ".claude"  # Claude Code's project settings folder in the group folder


def open_agent_binds(agent_dir: Path) -> list[tuple[int, str]]:
    """``(fd, name)`` for each host-owned entry of the agent folder that the sandbox sees
    read-only (``AGENT_READ_ONLY``), opened with ``O_NOFOLLOW`` and confined (``safefs``).

    A missing entry is skipped; a link or anything but a regular file (a folder for
    ``.claude-fragments``) is refused with a warning and not bound: the agent planted it.
    The caller passes the descriptors to bwrap and closes them after the spawn."""
    out: list[tuple[int, str]] = []
    try:
        root = safefs.open_root(agent_dir)
    except safefs.UnsafePathError as exc:
        raise ConfigError(f"agent folder refused: {exc}") from None
    try:
        _real_settings_dir(root, agent_dir)
        for name in AGENT_READ_ONLY:
            want_dir = name == ".claude-fragments"
            flags = os.O_RDONLY | (os.O_DIRECTORY if want_dir else os.O_NONBLOCK)
            try:
                fd = safefs.open_beneath(root, name, flags)
            except FileNotFoundError:
                continue
            except (safefs.UnsafePathError, OSError) as exc:
                logger.warning("%s/%s not bound into the sandbox: %s", agent_dir, name, exc)
                continue
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)):
                os.close(fd)
                logger.warning("%s/%s not bound into the sandbox: wrong file type", agent_dir,
                               name)  # fmt: skip
                continue
            out.append((fd, name))
    except BaseException:
        close_fds(out)
        raise
    finally:
        os.close(root)
    return out


def _real_settings_dir(root: int, agent_dir: Path) -> None:
    """Make ``<agent>/.claude`` a real folder (the sandbox mounts an empty read-only one
    over it): a link or file there was planted by the agent and is removed, unfollowed."""
    try:
        try:
            st = os.stat(PROJECT_SETTINGS, dir_fd=root, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            logger.warning("%s/%s is not a folder (planted by the agent): removed", agent_dir,
                           PROJECT_SETTINGS)  # fmt: skip
            os.unlink(PROJECT_SETTINGS, dir_fd=root)
            st = None
        if st is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(PROJECT_SETTINGS, 0o700, dir_fd=root)
    except OSError as exc:  # bwrap then fails to mount over it and says so
        logger.warning("%s/%s: %s", agent_dir, PROJECT_SETTINGS, exc)


def close_fds(fds: Sequence[tuple[int, str]]) -> None:
    for fd, _ in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
