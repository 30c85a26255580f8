"""Where a group's installed packages live, and what a sandbox that sees them gets on its
``PATH`` (``carapace.packages`` installs them; the bwrap backend binds the prefix)."""

from __future__ import annotations

import re
from pathlib import Path

from carapace.config import Home
from carapace.errors import ValidationError

GROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def group_dir(home: Home, agent_group_id: str) -> Path:
    """``<home>/data/packages/<agent group id>`` (host-owned)."""
    if not GROUP_RE.match(agent_group_id):
        raise ValidationError(f"bad agent group id {agent_group_id!r}")
    return home.data_dir / "packages" / agent_group_id


def sandbox_env(prefix: Path, path: str) -> dict[str, str]:
    """``PATH`` (and ``NODE_PATH``) for a sandbox that sees the group's prefix ``prefix``."""
    bins = [str(prefix / d / "bin") for d in ("venv", "npm") if (prefix / d / "bin").is_dir()]
    env = {"PATH": ":".join([*bins, path])}
    if (prefix / "npm" / "lib" / "node_modules").is_dir():
        env["NODE_PATH"] = str(prefix / "npm" / "lib" / "node_modules")
    return env
