"""``carapace doctor`` finds a truncated or corrupted ``inbound.db``/``outbound.db`` (issue 14
item 4), reading them as untrusted files: read-only, no link followed, nothing changed."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from carapace.cli import main
from carapace.config import Home
from carapace.migrate.doctor import diagnose
from carapace.testing.v1fixtures import make_nanoclaw_v2_home


def files_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def session_findings(root: Path) -> list[tuple[str, str, str]]:
    return [
        (f.level, f.code, f.message)
        for f in diagnose(Home(root)).findings
        if f.code.startswith("session-db")
    ]


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    home = make_nanoclaw_v2_home(tmp_path / "nc")
    for name, table in (("outbound.db", "messages_out"), ("inbound.db", "messages_in")):
        conn = sqlite3.connect(home.session_dir / name)
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        row = conn.execute(f"SELECT * FROM {table} LIMIT 1").fetchone()
        for i in range(400):  # enough rows for many pages
            values = [f"{v}-{i}" if c == "id" else v for c, v in zip(cols, row, strict=True)]
            if "seq" in cols:
                values[cols.index("seq")] = 1000 + 2 * i
            marks = ",".join("?" for _ in cols)
            conn.execute(f"INSERT INTO {table} VALUES ({marks})", values)
        conn.commit()
        conn.close()
    assert session_findings(home.root) == []
    return home.session_dir


@pytest.mark.parametrize("name", ["outbound.db", "inbound.db"])
@pytest.mark.parametrize("cut", [1, 4096, 3 * 4096 + 17])
def test_truncated_session_db_is_an_error(v2: Path, name: str, cut: int) -> None:
    path = v2 / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    root = v2.parents[3]
    before = files_hash(root)
    [(level, code, message)] = session_findings(root)
    assert (level, code) == ("error", "session-db-corrupt") and "truncated" in message
    res = CliRunner().invoke(main, ["doctor", "--home", str(root)])
    assert res.exit_code == 1 and "session-db-corrupt" in res.output
    assert files_hash(root) == before


@pytest.mark.parametrize("name", ["outbound.db", "inbound.db"])
def test_truncated_with_a_stale_header_is_found_by_the_integrity_check(v2: Path, name: str) -> None:
    path = v2 / name
    data = bytearray(path.read_bytes())
    data[92:96] = b"\0\0\0\0"  # the header's page count no longer vouched for
    path.write_bytes(bytes(data[: len(data) - 2 * 4096]))
    [(level, code, message)] = session_findings(v2.parents[3])
    assert (level, code) == ("error", "session-db-corrupt"), message


@pytest.mark.parametrize("name", ["outbound.db", "inbound.db"])
def test_a_corrupted_page_of_the_same_size_is_an_error(v2: Path, name: str) -> None:
    path = v2 / name
    data = bytearray(path.read_bytes())
    last = len(data) // 4096 - 1
    data[last * 4096 + 8 : (last + 1) * 4096] = b"\x5a" * (4096 - 8)  # a leaf page garbled
    path.write_bytes(bytes(data))
    [(level, code, message)] = session_findings(v2.parents[3])
    assert (level, code) == ("error", "session-db-corrupt"), message


def test_a_linked_outbound_db_is_refused_not_followed(v2: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    (v2 / "outbound.db").rename(elsewhere)
    (v2 / "outbound.db").symlink_to(elsewhere)
    [(level, code, message)] = session_findings(v2.parents[3])
    assert level == "error" and code == "session-db-unreadable" and "refused" in message


def test_a_hostile_outbound_schema_is_refused(v2: Path) -> None:
    conn = sqlite3.connect(v2 / "outbound.db")
    conn.execute("CREATE VIEW boom AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL "
                 "SELECT x + 1 FROM r) SELECT x FROM r")  # fmt: skip
    conn.commit()
    conn.close()
    [(level, code, message)] = session_findings(v2.parents[3])
    assert (level, code) == ("error", "session-db-unreadable") and "view" in message


def test_an_empty_or_truncated_central_db_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", "--home", str(home)]).exit_code == 0
    central = home / "data" / "v2.db"
    data = central.read_bytes()
    central.write_bytes(data[: len(data) - 4096])
    codes = {f.code: f.level for f in diagnose(Home(home)).findings}
    assert codes.get("central-db-corrupt") == "error", codes
    central.write_bytes(b"")
    before = files_hash(home)
    res = CliRunner().invoke(main, ["doctor", "--home", str(home)])
    assert res.exit_code == 1 and "central-db-empty" in res.output, res.output
    assert files_hash(home) == before


def test_failed_messages_are_a_warning(v2: Path) -> None:
    conn = sqlite3.connect(v2 / "inbound.db")
    conn.execute("UPDATE messages_in SET status='failed' WHERE rowid IN "
                 "(SELECT rowid FROM messages_in LIMIT 2)")  # fmt: skip
    conn.commit()
    conn.close()
    found = [(f.level, f.code, f.message) for f in diagnose(Home(v2.parents[3])).findings
             if f.code == "failed-messages"]  # fmt: skip
    assert found and found[0][0] == "warning" and found[0][2].startswith("2 message(s)")
