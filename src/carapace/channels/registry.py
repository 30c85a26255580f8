"""The channel adapters that exist, by channel type: the one list every place that names
adapters reads (``migrate-v1``'s report, ``doctor``, the docs' claims). Add an adapter here
when it lands, and only then: a chat on any other channel type is inert, and says so."""

from __future__ import annotations

#: channel type → the module holding its adapter (the test-only ``fake`` is not listed).
ADAPTERS: dict[str, str] = {
    "cli": "carapace.channels.cli",
    "web": "carapace.web.channel",
    "webhook": "carapace.web.hooks",
}


def available_channels() -> tuple[str, ...]:
    """Channel types carapace has an adapter for, sorted."""
    return tuple(sorted(ADAPTERS))
