"""``carapace web``: sign-in links, webhook secrets, screenshots of the pages."""

from __future__ import annotations

import secrets as pysecrets
from pathlib import Path

import click

from carapace.cli import clean_errors, home_option
from carapace.config import Home
from carapace.errors import ConfigError
from carapace.timefmt import utcnow


@click.group()
def web() -> None:
    """The web server: sign-in links, webhook secrets, screenshots ([web] in carapace.toml)."""


@web.command("login-link")
@home_option
@click.option(
    "--user",
    "name",
    default="owner",
    show_default=True,
    help="The web user's name; signs in as the users row web:NAME.",
)
@click.option(
    "--role",
    type=click.Choice(["owner", "admin", "none"]),
    default="none",
    show_default=True,
    help="Grant this global role to web:NAME first (none: keep its roles as they are).",
)
@clean_errors
def login_link(home: str | None, name: str, role: str) -> None:  # fmt: skip
    """Print a one-time sign-in link (valid 15 minutes) for the web user web:NAME.

    \b
    The user row is created when missing. Without a role it may chat with the agent groups
    it is a member of; the dashboard is for owners and global admins.
    """
    from carapace.bootstrap import init_home
    from carapace.web.auth import make_login_link
    from carapace.web.channel import check_user_name
    from carapace.web.config import web_settings

    check_user_name(name)
    h = Home.resolve(home)
    init_home(h)
    if not web_settings(h.load_settings(), h).enabled:
        click.echo("note: [web] enabled = true is not set in carapace.toml; the link works once "
                   "the web server runs", err=True)  # fmt: skip
    click.echo(make_login_link(h, name, role, utcnow()))


@web.command("hook-secret")
@home_option
@click.argument("name")
@clean_errors
def hook_secret(home: str | None, name: str) -> None:
    """Create (or replace) the secret of webhook NAME in <home>/secrets.env and print it.

    The hook itself is configured in carapace.toml ([web.hooks.NAME]); the host reads the
    secret at start.
    """
    from carapace.web.config import HOOK_NAME, hook_secret_key

    if not HOOK_NAME.match(name):
        raise ConfigError(f"bad hook name {name!r}: 1-40 of a-z, 0-9, '-' and '_'")
    h = Home.resolve(home)
    value = pysecrets.token_urlsafe(32)
    from carapace.secretsfile import SECRETS_FILE, write_secret

    write_secret(h.root / SECRETS_FILE, {hook_secret_key(name): value})
    click.echo(value)


@web.command("screenshots")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default="docs/screenshots",
    show_default=True,
    help="Folder for the PNG files.",
)
@click.option(
    "--chromium",
    default="/usr/bin/chromium",
    show_default=True,
    help="The Chromium executable (never downloaded).",
)
@clean_errors
def screenshots(out: str, chromium: str) -> None:
    """Screenshots of the main pages, taken in headless Chromium against a demo home."""
    from carapace.web.shots import take_screenshots

    for path in take_screenshots(Path(out), chromium):
        click.echo(str(path))
