"""``carapace service``, ``backup``, ``restore`` and ``status`` (loaded lazily by the CLI)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from carapace.cli import clean_errors, home_option
from carapace.config import Home

F = TypeVar("F", bound=Callable[..., Any])


def io_errors(fn: F) -> F:
    """A file or database the command cannot use is one line, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OSError, sqlite3.Error) as exc:
            raise click.ClickException(f"{exc} [io]")

    return wrapper  # type: ignore[return-value]


unit_dir_option = click.option(
    "--unit-dir",
    default=None,
    metavar="DIR",
    help="Where to write the unit (default: $CARAPACE_UNIT_DIR, else the per-user directory).",
)
kind_option = click.option(
    "--kind",
    type=click.Choice(["systemd", "launchd"]),
    default=None,
    help="Service manager (default: launchd on macOS, systemd elsewhere).",
)


@click.group()
def service() -> None:
    """Run the host as a service: a systemd user unit or a launchd agent."""


@service.command("install")
@home_option
@unit_dir_option
@kind_option
@click.option("--no-enable", is_flag=True, help="Only write the unit; do not enable or start it.")
@clean_errors
@io_errors
def service_install(home: str | None, unit_dir: str | None, kind: str | None,
                    no_enable: bool) -> None:  # fmt: skip
    """Write the unit for this home and enable and start it (restarts on exit, with backoff)."""
    from carapace.ops import service as svc

    spec = svc.spec_for(Home.resolve(home), kind)
    res = svc.install(spec, svc.unit_dir(spec.kind, unit_dir), enable=not no_enable)
    for line in res.lines:
        click.echo(line)


@service.command("uninstall")
@home_option
@unit_dir_option
@kind_option
@click.option("--no-disable", is_flag=True, help="Only remove the unit file.")
@clean_errors
@io_errors
def service_uninstall(home: str | None, unit_dir: str | None, kind: str | None,
                      no_disable: bool) -> None:  # fmt: skip
    """Stop and disable the service and remove its unit."""
    from carapace.ops import service as svc

    k = kind or svc.platform_kind()
    res = svc.uninstall(k, svc.unit_dir(k, unit_dir), disable=not no_disable)
    for line in res.lines:
        click.echo(line)


@service.command("status")
@home_option
@unit_dir_option
@kind_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@clean_errors
@io_errors
def service_status(home: str | None, unit_dir: str | None, kind: str | None,
                   as_json: bool) -> None:  # fmt: skip
    """Whether the unit is installed, names this home, and is running."""
    from carapace.ops import service as svc

    k = kind or svc.platform_kind()
    info = svc.status(Home.resolve(home), k, svc.unit_dir(k, unit_dir))
    if as_json:
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        click.echo(f"{key}: {value}")


@click.command("backup")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.argument("dest", type=click.Path(path_type=Path))
@clean_errors
@io_errors
def backup(home: str | None, as_json: bool, dest: Path) -> None:
    """Copy the home to DEST (a new directory) while the host may keep running.

    \b
    SQLite's online backup API snapshots the central DB and every session DB; group
    folders are copied without following links; DEST/manifest.json lists every file
    with its SHA-256.
    """
    from carapace.ops.backup import backup as run_backup

    try:
        rep = run_backup(Home.resolve(home), dest.expanduser().absolute())
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(f"backup failed: {exc} [backup]")
    doc: dict[str, Any] = {"dest": str(rep.dest), "files": rep.files, "bytes": rep.bytes,
                           "sessions": rep.sessions, "skipped": rep.skipped}  # fmt: skip
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"backed up {rep.files} file(s), {rep.bytes} bytes, {rep.sessions} session(s) "
               f"to {rep.dest}")  # fmt: skip
    for s in rep.skipped:
        click.echo(f"  skipped {s['path']}: {s['why']}")


@click.command("restore")
@home_option
@click.option("--force", is_flag=True, help="Restore into a non-empty home (moved aside first).")
@click.argument("src", type=click.Path(path_type=Path))
@clean_errors
@io_errors
def restore(home: str | None, force: bool, src: Path) -> None:
    """Restore a backup into the home, after checking every file's checksum.

    Refuses while a host runs for the home, and refuses a non-empty home unless --force
    (its data/, groups/ and carapace.toml are then moved to pre-restore-<time>/).
    """
    from carapace.ops.backup import restore as run_restore

    try:
        rep = run_restore(src.expanduser().absolute(), Home.resolve(home), force=force)
    except OSError as exc:
        raise click.ClickException(f"restore failed: {exc} [backup]")
    click.echo(f"restored {rep.files} file(s) into {rep.home}")
    if rep.moved_aside is not None:
        click.echo(f"the previous contents are in {rep.moved_aside}")


@click.command("status")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@clean_errors
@io_errors
def status(home: str | None, as_json: bool) -> None:
    """One screen: host up?, backend, channels, sessions, approvals, errors, today's usage."""
    from carapace.ops.status import collect, render

    info = collect(Home.resolve(home))
    click.echo(json.dumps(info, default=str) if as_json else render(info))
