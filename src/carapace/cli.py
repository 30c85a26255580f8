"""The ``carapace`` command line: thin wrappers over library functions.

Subcommands live next to the code they drive and are loaded lazily (``LAZY_COMMANDS``),
so ``carapace --help`` stays fast and a module's imports are paid only when used.

Every failure is one line on stderr and a non-zero exit: ``CarapaceError`` as
``Error: <message> [<code>]``; anything unexpected is caught by ``LazyGroup.invoke`` (the one
top-level guard) as ``Error: internal error: <type>: <message>`` (a full disk as
``Error: the disk is full (…): free space … [disk-full]``), with the traceback only
when ``CARAPACE_DEBUG=1`` is set.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from carapace import __version__
from carapace.config import Home
from carapace.errors import CarapaceError, no_space
from carapace.perms import private_umask

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "CARAPACE_DEBUG"  # set to 1: unexpected errors show their traceback
MAX_ERROR_CHARS = 500

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
            raise click.ClickException(error_line(exc))

    return wrapper  # type: ignore[return-value]


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    flat = flat.encode("utf-8", "backslashreplace").decode("utf-8")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


DISK_FULL_HINT = (
    ": free space on the file system holding the home, then run the command again [disk-full]"
)


def error_line(exc: CarapaceError) -> str:
    """A carapace error as its one line; one caused by a full disk says what to do."""
    if no_space(exc):
        return one_line(f"the disk is full ({exc}){DISK_FULL_HINT}")
    return one_line(f"{exc} [{exc.code}]")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def seconds_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: a finite, non-negative number of seconds (None passes through)."""
    if value is None:
        return value
    if not math.isfinite(value) or value < 0 or value > 10 * 365 * 24 * 3600:
        raise click.BadParameter(f"must be a number of seconds from 0 to 10 years, not {value:g}")
    return value


class OneLineUsageError(click.ClickException):
    """A usage error as one line (click's own prints the usage and a help hint first)."""

    exit_code = 2

    @classmethod
    def of(cls, exc: click.UsageError) -> OneLineUsageError:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return cls(one_line(exc.format_message()) + where)


class LazyGroup(click.Group):
    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:  # fmt: skip
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise OneLineUsageError.of(exc)

    def invoke(self, ctx: click.Context) -> Any:
        """The one top-level guard: no traceback reaches the user (unless ``CARAPACE_DEBUG``)."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise OneLineUsageError.of(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CarapaceError as exc:
            raise click.ClickException(error_line(exc))
        except BrokenPipeError:
            raise  # the reader went away (``| head``): click ends quietly
        except Exception as exc:
            if no_space(exc):  # e.g. the host cannot start: say what to do, not "internal"
                raise click.ClickException(one_line(f"the disk is full ({exc}){DISK_FULL_HINT}"))
            if debug_enabled():
                raise
            logging.getLogger("carapace").debug("unexpected error", exc_info=True)
            raise click.ClickException(
                one_line(f"internal error: {type(exc).__name__}: {exc}")
                + f" (set {DEBUG_ENV}=1 for the traceback)"
            )

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
    for stream in (sys.stdout, sys.stderr):  # text from anywhere prints, never crashes
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
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
    from carapace.host.client import preflight

    h = Home.resolve(home)
    preflight(h)  # what the host would refuse in carapace.toml, refused now
    report = init_home(h)
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
