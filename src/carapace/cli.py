"""The ``carapace`` command line: thin wrappers over library functions.

Subcommands live next to the code they drive and are loaded lazily (``LAZY_COMMANDS``),
so ``carapace --help`` stays fast and a module's imports are paid only when used.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from carapace import __version__
from carapace.config import Home
from carapace.errors import CarapaceError
from carapace.perms import private_umask

F = TypeVar("F", bound=Callable[..., Any])

# name -> "module:attribute" of a click.Command
LAZY_COMMANDS: dict[str, str] = {
    "run": "carapace.commands.host:run",
    "chat": "carapace.commands.host:chat",
    "send": "carapace.commands.host:send",
    "bench": "carapace.commands.host:bench",
    "admin": "carapace.commands.admin:admin",
    "migrate-v1": "carapace.commands.migrate:migrate_v1",
    "doctor": "carapace.commands.migrate:doctor",
    "service": "carapace.commands.ops:service",
    "backup": "carapace.commands.ops:backup",
    "restore": "carapace.commands.ops:restore",
    "status": "carapace.commands.ops:status",
    "web": "carapace.commands.web:web",
    "channels": "carapace.commands.channels:channels",
}

home_option = click.option(
    "--home",
    "home",
    envvar="CARAPACE_HOME",
    type=str,
    default=None,
    metavar="DIR",
    help="The carapace home (env CARAPACE_HOME; default: the user data directory).",
)


def clean_errors(fn: F) -> F:
    """Turn carapace errors into one clear line and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CarapaceError as exc:
            raise click.ClickException(f"{exc} [{exc.code}]")

    return wrapper  # type: ignore[return-value]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, attr = LAZY_COMMANDS[cmd_name].split(":")
            cmd = getattr(importlib.import_module(module), attr)
            if not isinstance(cmd, click.Command):
                raise click.ClickException(f"{LAZY_COMMANDS[cmd_name]} is not a command")
            self.add_command(cmd, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="carapace")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """carapace: a personal AI-assistant host."""
    private_umask()  # everything carapace creates is owner-only (0700 folders, 0600 files)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@clean_errors
def init(home: str | None, as_json: bool) -> None:
    """Create the home, run migrations and (first time only) the default agent."""
    from carapace.bootstrap import init_home

    report = init_home(Home.resolve(home))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "home": str(report.home),
                    "changed": report.changed,
                    "migrations": report.migrations,
                    "created": report.created,
                }
            )
        )
        return
    if not report.changed:
        click.echo(f"carapace home {report.home} is up to date; nothing changed.")
        return
    click.echo(f"carapace home {report.home}:")
    if report.migrations:
        click.echo(f"  applied {len(report.migrations)} migration(s)")
    for line in report.created:
        click.echo(f"  created {line}")
