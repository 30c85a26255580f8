"""carapace: a personal AI-assistant host. Sandboxed agents, SQLite everywhere, nothing lost.

The public Python API (DESIGN §6) is loaded lazily, so ``import carapace`` stays cheap for
the runner process::

    from carapace import Home, Host, Settings, init_home
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


__version__ = "0.1.0"

_LAZY = {
    "CarapaceError": "carapace.errors",
    "FakeClock": "carapace.timefmt",
    "Home": "carapace.config",
    "Host": "carapace.host.host",
    "HostOptions": "carapace.host.host",
    "Settings": "carapace.config",
    "init_home": "carapace.bootstrap",
}

__all__ = [
    "CarapaceError",
    "FakeClock",
    "Home",
    "Host",
    "HostOptions",
    "Settings",
    "__version__",
    "init_home",
]

if TYPE_CHECKING:
    from carapace.bootstrap import init_home
    from carapace.config import Home, Settings
    from carapace.errors import CarapaceError
    from carapace.host.host import Host, HostOptions
    from carapace.timefmt import FakeClock


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'carapace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
