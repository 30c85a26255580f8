"""The channel adapters carapace ships: one place that names them.

``carapace run`` builds its adapters from here, and ``migrate-v1`` / ``doctor`` warn about
chats whose channel type is not in :data:`ADAPTERS` (those chats are neither received nor
answered). Adding an adapter here is what makes it exist everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from carapace.channels.base import ChannelAdapter
from carapace.config import Home


def _cli(home: Home) -> ChannelAdapter:
    from carapace.channels.cli import CliChannel

    return CliChannel(home.cli_socket)


#: channel type -> factory of its adapter for a home
ADAPTERS: dict[str, Callable[[Home], ChannelAdapter]] = {"cli": _cli}


def adapter_types() -> tuple[str, ...]:
    """The channel types an adapter exists for, sorted."""
    return tuple(sorted(ADAPTERS))


def build_adapters(home: Home) -> list[ChannelAdapter]:
    return [factory(home) for _, factory in sorted(ADAPTERS.items())]
