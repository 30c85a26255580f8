"""Chat-SDK state store (spec/host.md §9): KV with TTL, subscriptions, locks, lists.

Times are epoch **milliseconds** as NanoClaw stores them; every call takes ``now_ms``
so tests drive expiry without sleeping. Expired rows are invisible and swept lazily.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from carapace.db.connection import transaction
from carapace.jsonutil import dumps, loads_or


def kv_set(
    db: sqlite3.Connection, key: str, value: Any, *, now_ms: int, ttl_ms: int | None = None
) -> None:
    expires = None if ttl_ms is None else now_ms + ttl_ms
    db.execute(
        "INSERT INTO chat_sdk_kv (key, value, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value, expires_at=excluded.expires_at",
        (key, dumps(value), expires),
    )


def kv_get(db: sqlite3.Connection, key: str, *, now_ms: int) -> Any:
    row = db.execute(
        "SELECT value FROM chat_sdk_kv WHERE key=? AND (expires_at IS NULL OR expires_at > ?)",
        (key, now_ms),
    ).fetchone()
    return None if row is None else loads_or(row[0], None)


def kv_delete(db: sqlite3.Connection, key: str) -> None:
    db.execute("DELETE FROM chat_sdk_kv WHERE key=?", (key,))


def subscribe(db: sqlite3.Connection, thread_id: str) -> None:
    db.execute("INSERT OR IGNORE INTO chat_sdk_subscriptions (thread_id) VALUES (?)", (thread_id,))


def unsubscribe(db: sqlite3.Connection, thread_id: str) -> None:
    db.execute("DELETE FROM chat_sdk_subscriptions WHERE thread_id=?", (thread_id,))


def is_subscribed(db: sqlite3.Connection, thread_id: str) -> bool:
    row = db.execute("SELECT 1 FROM chat_sdk_subscriptions WHERE thread_id=?", (thread_id,))
    return row.fetchone() is not None


def lock_acquire(db: sqlite3.Connection, thread_id: str, *, now_ms: int, ttl_ms: int) -> str | None:
    """Take the lock (or an expired one); returns the holder's token, None when held."""
    token = secrets.token_hex(16)
    with transaction(db):
        row = db.execute(
            "SELECT expires_at FROM chat_sdk_locks WHERE thread_id=?", (thread_id,)
        ).fetchone()
        if row is not None and row[0] > now_ms:
            return None
        db.execute(
            "INSERT INTO chat_sdk_locks (thread_id, token, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(thread_id) DO UPDATE SET token=excluded.token, "
            "expires_at=excluded.expires_at",
            (thread_id, token, now_ms + ttl_ms),
        )
    return token


def lock_extend(
    db: sqlite3.Connection, thread_id: str, token: str, *, now_ms: int, ttl_ms: int
) -> bool:
    """Extend a live lock; only the holder's token works."""
    cur = db.execute(
        "UPDATE chat_sdk_locks SET expires_at=? WHERE thread_id=? AND token=? AND expires_at > ?",
        (now_ms + ttl_ms, thread_id, token, now_ms),
    )
    return cur.rowcount > 0


def lock_release(db: sqlite3.Connection, thread_id: str, token: str) -> bool:
    cur = db.execute("DELETE FROM chat_sdk_locks WHERE thread_id=? AND token=?", (thread_id, token))
    return cur.rowcount > 0


def list_append(
    db: sqlite3.Connection,
    key: str,
    value: Any,
    *,
    now_ms: int,
    ttl_ms: int | None = None,
    max_len: int | None = None,
) -> int:
    """Append; returns the new entry's index. ``max_len`` trims the oldest entries."""
    expires = None if ttl_ms is None else now_ms + ttl_ms
    with transaction(db):
        row = db.execute("SELECT COALESCE(MAX(idx), -1) FROM chat_sdk_lists WHERE key=?", (key,))
        idx = int(row.fetchone()[0]) + 1
        db.execute(
            "INSERT INTO chat_sdk_lists (key, idx, value, expires_at) VALUES (?, ?, ?, ?)",
            (key, idx, dumps(value), expires),
        )
        if max_len is not None:
            list_trim(db, key, max_len)
    return idx


def list_trim(db: sqlite3.Connection, key: str, max_len: int) -> None:
    """Keep only the newest ``max_len`` entries."""
    db.execute(
        "DELETE FROM chat_sdk_lists WHERE key=? AND idx NOT IN ("
        "SELECT idx FROM chat_sdk_lists WHERE key=? ORDER BY idx DESC LIMIT ?)",
        (key, key, max(0, max_len)),
    )


def list_range(
    db: sqlite3.Connection, key: str, *, now_ms: int, start: int = 0, stop: int | None = None
) -> list[Any]:
    """Live entries in append order, sliced like Python's ``[start:stop]``."""
    rows = db.execute(
        "SELECT value FROM chat_sdk_lists WHERE key=? AND (expires_at IS NULL OR expires_at > ?) "
        "ORDER BY idx",
        (key, now_ms),
    ).fetchall()
    return [loads_or(r[0], None) for r in rows][start:stop]


def list_delete(db: sqlite3.Connection, key: str) -> None:
    db.execute("DELETE FROM chat_sdk_lists WHERE key=?", (key,))


def sweep_expired(db: sqlite3.Connection, *, now_ms: int) -> int:
    """Delete expired KV entries, locks and list entries; returns how many rows went."""
    n = 0
    with transaction(db):
        for table in ("chat_sdk_kv", "chat_sdk_locks", "chat_sdk_lists"):
            n += db.execute(
                f"DELETE FROM {table} WHERE expires_at IS NOT NULL AND expires_at <= ?", (now_ms,)
            ).rowcount
    return n
