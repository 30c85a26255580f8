"""``carapace channels add|list|remove``: configure the chat platforms the host serves.

``add TYPE`` asks for each of the adapter's secrets (or takes them from the environment),
checks them against the platform (``verify``: Telegram's ``getMe``) and only then writes them
to ``<home>/secrets.env`` (mode 0600, replaced atomically; never the DB). ``remove TYPE``
deletes them. A running host picks a change up at its next start.
"""

from __future__ import annotations

import asyncio
import json
import os

import click

from carapace.channels import registry
from carapace.cli import clean_errors, home_option
from carapace.config import Home
from carapace.errors import ValidationError


@click.group()
def channels() -> None:
    """Chat platforms: add (verify and store credentials), list, remove."""


@channels.command("add")
@home_option
@click.option("--base-url", default=None, metavar="URL",
              help="Check against this API base URL (a test server, a self-hosted Bot API); "
                   "the host reads its own from [channels.TYPE] base_url.")  # fmt: skip
@click.option("--mode", default=None, metavar="MODE",
              help="How the adapter connects, for adapters with several ways (slack: socket, "
                   "the default, or events: Slack's Events API over the web server).")  # fmt: skip
@click.argument("channel_type")
@clean_errors
def channels_add(home: str | None, base_url: str | None, mode: str | None,
                 channel_type: str) -> None:  # fmt: skip
    """Verify CHANNEL_TYPE's credentials with the platform and store them.

    Each secret (e.g. TELEGRAM_BOT_TOKEN) is taken from the environment when set there,
    else asked for without echo. Nothing is written unless the platform accepts them."""
    h = Home.resolve(home)
    module = registry.adapter_module(channel_type)
    keys = registry.secret_keys(module, mode)
    values: dict[str, str] = {}
    for key in keys:
        value = os.environ.get(key) or click.prompt(key, hide_input=True, err=True)
        value = value.strip()
        if not value:
            raise ValidationError(f"{key} is empty")
        values[key] = value
    url = base_url or registry.base_url(h.load_settings(), channel_type)
    identity = asyncio.run(module.verify(values, base_url=url))
    if keys:
        from carapace.secretsfile import SECRETS_FILE, write_secret

        h.root.mkdir(parents=True, exist_ok=True)
        # another mode's secrets go: the adapter connects the way it was last added
        other: dict[str, str | None] = {
            k: None for k in registry.secret_keys(module, "*") if k not in keys
        }
        write_secret(h.root / SECRETS_FILE, {**other, **values})
    stored = f"; stored {', '.join(keys)} in {h.root / 'secrets.env'}" if keys else ""
    click.echo(f"{channel_type}: verified {identity}{stored}. "
               "A running host uses it after its next start.")  # fmt: skip


@channels.command("list")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@clean_errors
def channels_list(home: str | None, as_json: bool) -> None:
    """Each adapter: configured or not, and the state the host last recorded."""
    from dataclasses import replace

    from carapace.ops.backup import host_running

    h = Home.resolve(home)
    up = host_running(h)
    infos = [i if up or i.state != "running" else replace(i, state="stopped", detail="no host running")
             for i in registry.list_channels(h)]  # fmt: skip
    if as_json:
        click.echo(json.dumps([i.to_json() for i in infos], indent=2))
        return
    for i in infos:
        conf = "configured" if i.configured else f"not configured (needs {', '.join(i.missing)})"
        state = i.state + (f": {i.detail}" if i.detail else "")
        click.echo(f"{i.channel_type:<10} {conf:<40} {state}")


@channels.command("remove")
@home_option
@click.argument("channel_type")
@clean_errors
def channels_remove(home: str | None, channel_type: str) -> None:
    """Delete CHANNEL_TYPE's secrets from the home's secrets file."""
    from carapace.secretsfile import SECRETS_FILE, read_secrets_file, write_secret

    h = Home.resolve(home)
    keys = registry.secret_keys(registry.adapter_module(channel_type), "*")
    path = h.root / SECRETS_FILE
    present = [k for k in keys if k in read_secrets_file(path)]
    if not present:
        click.echo(f"{channel_type}: no secrets stored in {path}; nothing changed.")
        return
    write_secret(path, dict.fromkeys(present))
    click.echo(f"{channel_type}: removed {', '.join(present)} from {path}. "
               "A running host stops using it after its next start.")  # fmt: skip
