"""Package names an agent may ask for: one rule for the agent's tool, the approval handler and
the installer (floor 0, so all three can import it).

A name is a bare registry name: no version spec, URL, path, option or shell character, and it
starts with a letter or digit so it can never read as a command-line option.
"""

from __future__ import annotations

import re

KINDS = ("apt", "npm", "pip")

# Debian: lowercase letters, digits and + - . (NanoClaw also lets _ through; so do we, the
# installer refuses apt anyway); starts alphanumeric. Capped at 100.
_APT = re.compile(r"[a-z0-9][a-z0-9._+-]{0,99}")
# npm: lowercase, an optional @scope/; npm's own limit is 214 characters for the whole name.
_NPM = re.compile(r"(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*")
_NPM_MAX = 214
# PEP 508: letters, digits, . _ -; starts and ends alphanumeric. Capped at 100.
_PIP = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")

_HINT = {
    "apt": "lowercase letters, digits and ._+- only",
    "npm": "lowercase letters, digits and ._- with an optional @scope/; no version spec",
    "pip": "letters, digits and ._-, ending in a letter or digit; no version spec",
}


def valid(kind: str, name: object) -> bool:
    """True when `name` is a bare package name of registry `kind` (apt, npm or pip)."""
    if not isinstance(name, str):
        return False
    if kind == "apt":
        return _APT.fullmatch(name) is not None
    if kind == "npm":
        return len(name) <= _NPM_MAX and _NPM.fullmatch(name) is not None
    if kind == "pip":
        return _PIP.fullmatch(name) is not None
    raise ValueError(f"unknown package kind {kind!r}")


def problem(kind: str, name: object) -> str | None:
    """None for a good name, else a one-line reason naming the rule."""
    if valid(kind, name):
        return None
    return f'invalid {kind} package name "{name}" ({_HINT[kind]})'
