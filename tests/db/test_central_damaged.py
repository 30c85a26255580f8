"""A damaged data/v2.db is refused with a clear error, never replaced by a fresh empty DB."""

from __future__ import annotations

from pathlib import Path

import pytest

from carapace.db.central import open_central
from carapace.errors import ConfigError


@pytest.mark.parametrize(("content", "words"), [(b"", "empty"), (b"garbage" * 10, "not an SQLite")])
def test_damaged_central_db_is_refused_and_left_alone(
    tmp_path: Path, content: bytes, words: str
) -> None:
    db = tmp_path / "data" / "v2.db"
    db.parent.mkdir()
    db.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        open_central(db)
    assert db.read_bytes() == content
    assert sorted(p.name for p in db.parent.iterdir()) == ["v2.db"]


def test_missing_central_db_is_still_created(tmp_path: Path) -> None:
    conn = open_central(tmp_path / "data" / "v2.db")
    conn.close()
    assert (tmp_path / "data" / "v2.db").read_bytes()[:16] == b"SQLite format 3\x00"
