"""Progress bars for long operations a person waits for; silent when not on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Advance = Callable[[str], None]


@contextmanager
def progress(label: str, total: int, *, stream: TextIO | None = None) -> Iterator[Advance]:
    """Yield ``advance(what)``; draws a ``rich`` bar on a terminal, nothing otherwise."""
    out = stream or sys.stderr
    if not out.isatty() or total <= 0:
        yield lambda what: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"), console=Console(file=out), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=total, what="")

        def advance(what: str) -> None:
            bar.update(task, advance=1, what=what[-40:])

        yield advance
