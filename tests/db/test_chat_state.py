"""Chat-SDK state: TTL in milliseconds, holder-only locks, bounded lists; expiry by clock."""

from __future__ import annotations

import sqlite3

from carapace.db import chat_state as cs

T0 = 1_700_000_000_000


def test_kv_ttl(central: sqlite3.Connection) -> None:
    cs.kv_set(central, "a", {"x": 1}, now_ms=T0, ttl_ms=1000)
    cs.kv_set(central, "b", [1, "é"], now_ms=T0)
    assert cs.kv_get(central, "a", now_ms=T0 + 999) == {"x": 1}
    assert cs.kv_get(central, "a", now_ms=T0 + 1000) is None
    assert cs.kv_get(central, "b", now_ms=T0 + 10**9) == [1, "é"]
    raw = central.execute("SELECT value, expires_at FROM chat_sdk_kv WHERE key='a'").fetchone()
    assert tuple(raw) == ('{"x":1}', T0 + 1000)
    assert cs.sweep_expired(central, now_ms=T0 + 1000) == 1
    cs.kv_delete(central, "b")
    assert cs.kv_get(central, "b", now_ms=T0) is None


def test_locks(central: sqlite3.Connection) -> None:
    token = cs.lock_acquire(central, "t1", now_ms=T0, ttl_ms=500)
    assert token is not None
    assert cs.lock_acquire(central, "t1", now_ms=T0 + 100, ttl_ms=500) is None
    assert not cs.lock_extend(central, "t1", "wrong", now_ms=T0 + 100, ttl_ms=500)
    assert cs.lock_extend(central, "t1", token, now_ms=T0 + 400, ttl_ms=500)
    assert cs.lock_acquire(central, "t1", now_ms=T0 + 800, ttl_ms=500) is None
    assert not cs.lock_release(central, "t1", "wrong")
    # After expiry someone else takes it; the old holder can neither extend nor release it.
    other = cs.lock_acquire(central, "t1", now_ms=T0 + 901, ttl_ms=500)
    assert other is not None and other != token
    assert not cs.lock_extend(central, "t1", token, now_ms=T0 + 902, ttl_ms=500)
    assert not cs.lock_release(central, "t1", token)
    assert cs.lock_release(central, "t1", other)


def test_lists(central: sqlite3.Connection) -> None:
    for i in range(5):
        cs.list_append(central, "k", i, now_ms=T0, max_len=3)
    assert cs.list_range(central, "k", now_ms=T0) == [2, 3, 4]
    cs.list_append(central, "k", "short", now_ms=T0, ttl_ms=10)
    assert cs.list_range(central, "k", now_ms=T0 + 5) == [2, 3, 4, "short"]
    assert cs.list_range(central, "k", now_ms=T0 + 10) == [2, 3, 4]
    assert cs.list_range(central, "k", now_ms=T0, start=-2) == [4, "short"]
    cs.list_delete(central, "k")
    assert cs.list_range(central, "k", now_ms=T0) == []


def test_subscriptions(central: sqlite3.Connection) -> None:
    cs.subscribe(central, "th")
    cs.subscribe(central, "th")
    assert cs.is_subscribed(central, "th")
    cs.unsubscribe(central, "th")
    assert not cs.is_subscribed(central, "th")
