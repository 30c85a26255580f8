"""The Discord channel (``carapace channels add discord``), as the registry sees it.

The bot token is checked with Discord and kept in ``<home>/secrets.env`` as
``DISCORD_BOT_TOKEN``; the bot needs the Message Content intent switched on in Discord's
developer portal. The adapter itself (``discord_adapter``, on discord.py) is imported only
when a token is configured, so a home without Discord needs no discord.py (the ``discord``
extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from carapace.errors import CarapaceError, ConfigError

if TYPE_CHECKING:
    from carapace.channels.discord_adapter import DiscordChannel

CHANNEL_TYPE = "discord"
SECRET_KEYS = ("DISCORD_BOT_TOKEN",)
NOT_INSTALLED = (
    "discord.py is missing from this install (it is a dependency of carapace: reinstall it)"
)


class DiscordError(CarapaceError):
    """Discord refused the bot (bad or revoked token, missing intent, unreachable)."""

    code = "discord"


def _adapter_module() -> Any:
    try:
        from carapace.channels import discord_adapter
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("discord", "aiohttp", "yarl"):
            raise ConfigError(NOT_INSTALLED) from None
        raise
    return discord_adapter


async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    """Check the token with Discord (``GET /users/@me``); returns ``@name (id)``."""
    token = secrets.get("DISCORD_BOT_TOKEN", "").strip()
    if not token:
        raise DiscordError("DISCORD_BOT_TOKEN is not set")
    result: str = await _adapter_module().verify_token(token, base_url)
    return result


def from_home(home: Any, secrets: Mapping[str, str], settings: Any) -> DiscordChannel | None:
    """The adapter when a token is configured (None: Discord is not set up here)."""
    token = secrets.get("DISCORD_BOT_TOKEN", "").strip()
    if not token:
        return None
    from carapace.channels.discord_catchup import FILE_NAME
    from carapace.channels.registry import base_url

    adapter: DiscordChannel = _adapter_module().DiscordChannel(
        token, base_url=base_url(settings, CHANNEL_TYPE), state_path=home.data_dir / FILE_NAME
    )
    return adapter
