"""``carapace migrate-v1`` and ``carapace doctor`` (thin click wrappers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from carapace.cli import clean_errors, home_option
from carapace.config import Home


@click.command("migrate-v1")
@home_option
@click.option("--dry-run", is_flag=True, help="Report what would be imported; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@clean_errors
def migrate_v1(home: str | None, dry_run: bool, as_json: bool, source: Path) -> None:
    """Import a NanoClaw v1 install (its folder or store/messages.db) into the home.

    Re-running is safe: rows imported before are left as they are now.
    """
    from carapace.migrate.importer import migrate_v1 as run

    report = run(source, Home.resolve(home), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(report.render())
    if report.fatal:
        sys.exit(1)


@click.command("doctor")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable findings.")
@clean_errors
def doctor(home: str | None, as_json: bool) -> None:
    """Report what in the home carapace cannot use (exit 1 on errors; warnings are fine)."""
    from carapace.migrate.doctor import diagnose

    rep = diagnose(Home.resolve(home))
    if as_json:
        click.echo(json.dumps(rep.to_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(rep.render())
    if not rep.ok:
        sys.exit(1)
