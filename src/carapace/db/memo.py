"""Central-DB reads kept while the database is unchanged (issue 19: routing one message
read the same chat, wirings, agent group, user and session rows every time, six read
transactions on the event loop).

The test is exact, not a time to live: a value is used only while

* no other connection has committed to the database since the last :meth:`ReadMemo.check`
  (``PRAGMA data_version``: any process, any connection of this one), and
* this connection has changed no row since the value was read (``total_changes``).

So a wiring removed, a user's access revoked or a chat denied, by the CLI, the web UI or
the host itself, is never answered from the memo: the first read after the change goes to
the database. The router runs :meth:`ReadMemo.check` once per routing slice (at most 1 ms
of one pass of the event loop: one cheap read for a burst instead of six per message);
values are frozen rows, shared by reference.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_VALUES = 4096  # entries kept at most (cleared when full: a cache, not a store)


class ReadMemo:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._values: dict[Hashable, Any] = {}
        self._version: int | None = None  # data_version at the last check
        self._changes = -1  # total_changes when the values were valid
        self.hits = 0
        self.misses = 0

    def check(self) -> None:
        """Drop every value if another connection committed since the last check."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._values.clear()
            self._version = version
            self._changes = self.db.total_changes

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value for ``key``, read with ``load()`` unless the memo holds it still
        (call :meth:`check` first, once per operation). Never checked, or inside a
        transaction of this connection (a write under way): read through, keep nothing."""
        if self._version is None or self.db.in_transaction:
            self.misses += 1
            return load()
        if self.db.total_changes != self._changes:  # this connection wrote since
            self._values.clear()
            self._changes = self.db.total_changes
        try:
            value: T = self._values[key]
        except KeyError:
            pass
        else:
            self.hits += 1
            return value
        self.misses += 1
        value = load()
        if len(self._values) >= MAX_VALUES:
            self._values.clear()
        self._values[key] = value
        return value
