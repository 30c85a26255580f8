"""A client of ``data/cli.sock`` (used by ``carapace chat`` and ``carapace send``), and the
embedded host they start when none runs for the home."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from carapace.bootstrap import init_home
from carapace.channels.registry import build_adapters
from carapace.config import Home, Settings
from carapace.errors import ConfigError, ValidationError
from carapace.host.admin_server import AdminDispatch
from carapace.host.host import Host
from carapace.host.host_lifecycle import HostRunning
from carapace.jsonutil import dumps
from carapace.timefmt import new_id

logger = logging.getLogger(__name__)


MAX_MESSAGE_BYTES = 512 * 1024  # one message's text (the socket's lines stop at 1 MiB)
MAX_USER_CHARS = 64


def check_message(text: str) -> str:
    """``ValidationError`` (one line) unless ``text`` can be sent as one message."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(
            "the message is not valid UTF-8 (undecodable bytes or lone surrogates)"
        ) from None
    if not text.strip():
        raise ValidationError("the message is empty")
    if size > MAX_MESSAGE_BYTES:
        raise ValidationError(
            f"the message is {size:,} bytes; one message may carry at most "
            f"{MAX_MESSAGE_BYTES // 1024} KiB"
        )
    return text


def check_user(user: str) -> str:
    """The ``--as`` handle: 1–64 printable characters, no spaces, valid UTF-8."""
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("--as is not valid UTF-8") from None
    if not user or len(user) > MAX_USER_CHARS:
        raise ValidationError(f"--as must be 1 to {MAX_USER_CHARS} characters")
    if not user.isprintable() or any(c.isspace() for c in user):
        raise ValidationError("--as must be printable, without spaces")
    return user


def build_host(home: Home, *, admin: AdminDispatch | None = None) -> Host:
    """The host ``carapace run`` starts: every configured channel adapter
    (``carapace.channels.registry``; the CLI channel on ``data/cli.sock`` always); ``admin``
    is the admin verbs' dispatcher (the commands floor passes ``carapace.admin.dispatch``)."""
    settings = home.load_settings()
    check_default_provider(settings.default_provider)
    return Host(home, settings=settings, channels=build_adapters(home, settings), admin=admin)


def preflight(home: Home) -> Settings:
    """The checks a host start makes on carapace.toml, made before anything is written:
    a bad setting, an unknown ``default_provider``, an unusable requested runner backend."""
    from carapace.sandbox.bwrap import resolve_backend

    settings = home.load_settings()
    check_default_provider(settings.default_provider)
    resolve_backend(settings.runner_backend, settings.bwrap)
    return settings


def check_default_provider(name: str | None) -> None:
    """``ConfigError`` when carapace.toml's ``default_provider`` names no known provider."""
    from carapace.runner.config import PROVIDER_ALIASES
    from carapace.runner.providers import provider_names

    if not name:
        return
    key = name.strip().lower()
    if PROVIDER_ALIASES.get(key, key) not in provider_names():
        known = ", ".join([*provider_names(), *PROVIDER_ALIASES])
        raise ConfigError(
            f"carapace.toml: default_provider {name[:64]!r} is not a known provider "
            f"(known: {known})"
        )


@dataclass
class CliClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def connect(cls, home: Home, mode: str) -> CliClient:
        reader, writer = await asyncio.open_unix_connection(str(home.cli_socket), limit=1 << 20)
        client = cls(reader, writer)
        await client.write({"type": "hello", "mode": mode})
        return client

    async def write(self, obj: dict[str, Any]) -> None:
        self.writer.write((dumps(obj) + "\n").encode())
        await self.writer.drain()

    async def say(self, text: str, user: str, eid: str | None = None) -> str:
        check_message(text)
        eid = eid or new_id("cli")
        await self.write({"id": eid, "text": text, "senderId": f"cli:{user}", "sender": user})
        return eid

    async def read(self) -> dict[str, Any] | None:
        line = await self.reader.readline()
        if not line:
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            return {"type": "error", "error": "bad line from host"}
        return obj if isinstance(obj, dict) else {}

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def connect_or_embed(
    home: Home, mode: str, *, admin: AdminDispatch | None = None
) -> tuple[CliClient, Host | None]:
    """Connect to the home's running host, or start an embedded one for our lifetime."""
    try:
        return await CliClient.connect(home, mode), None
    except OSError:
        pass
    init_home(home)
    host = build_host(home, admin=admin)
    try:
        await host.start()
    except HostRunning:
        host.close()
        for _ in range(50):  # another host is starting; its socket appears shortly
            await asyncio.sleep(0.1)
            with contextlib.suppress(OSError):
                return await CliClient.connect(home, mode), None
        raise
    return await CliClient.connect(home, mode), host


async def stop_embedded(host: Host | None) -> None:
    if host is not None:
        await host.stop()
        host.close()
