"""What a package name may look like, per installer: one rule for the agent's request tool
(``runner/tools/selfmod.py``), the host's check of the request
(``permissions/system_actions.py``) and the installer (``packages/install.py``).

A name that passes can never be read as an option or a path by pip, npm or apt: it starts
with a letter or digit and holds no ``/`` (except npm's one ``@scope/``), no spaces, no
``=``/``<``/``>`` version specifiers and no URL. Lengths are the registries' own limits
where they have one (npm: 214), else a generous bound (100).
"""

from __future__ import annotations

import re

PIP_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508
NPM_RE = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")
NPM_MAX = 214
APT_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,99}$")  # NanoClaw's rule ("_" too)

_RULES = {"pip": PIP_RE, "npm": NPM_RE, "apt": APT_RE}


def valid_package(kind: str, name: object) -> bool:
    """``name`` is a package name ``kind`` (``pip``, ``npm``, ``apt``) may be asked for."""
    rule = _RULES.get(kind)
    if rule is None or not isinstance(name, str) or not rule.match(name):
        return False
    return kind != "npm" or len(name) <= NPM_MAX
