"""Opening the central DB (``data/v2.db``) and small row helpers shared by the table modules."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from carapace.db.connection import connect
from carapace.db.migrations import migrate
from carapace.errors import ConfigError

T = TypeVar("T")


def open_central(path: str | Path, *, run_migrations: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the central DB."""
    p = Path(path)
    _refuse_damaged(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(p, "central", check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open central DB {p}: {exc}")
    if run_migrations:
        migrate(conn)
    return conn


def _refuse_damaged(p: Path) -> None:
    """An existing central DB that is empty or not SQLite is damage, never a fresh home.

    SQLite would silently turn a zero-length file into a new empty DB, orphaning every session.
    """
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read central DB {p}: {exc}")
    if head != b"SQLite format 3\x00":
        what = "is empty (zero length)" if not head else "is not an SQLite database"
        raise ConfigError(
            f"central DB {p} {what}; restore it from a backup (refusing to create a new one)"
        )


_FIELD_NAMES: dict[type, frozenset[str]] = {}  # per row dataclass (fields() is slow)


def from_row(cls: type[T], row: sqlite3.Row | None) -> T | None:
    """Build a row dataclass from a ``sqlite3.Row``, ignoring columns it does not declare."""
    if row is None:
        return None
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    keys = row.keys()  # (a Row iterates over its values)
    return cls(**{k: row[k] for k in keys if k in names})


def from_rows(cls: type[T], rows: list[sqlite3.Row]) -> list[T]:
    return [r for r in (from_row(cls, row) for row in rows) if r is not None]


def as_dict(row: Any) -> dict[str, Any]:
    return dataclasses.asdict(row)
