"""The ``carapace`` command line."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """carapace: a personal AI-assistant host."""
