"""A sandboxed runner cannot forge rows in the host-owned ``inbound.db`` (DESIGN §1, §5).

The attack: SQLite trusts files next to a database. A "hot" ``inbound.db-journal`` is rolled
back into ``inbound.db`` by the next read-write open (the host's), and an ``inbound.db-wal``
makes SQLite open the file in WAL mode and read (then checkpoint) the pages in it. Both are
crafted here for real and shown to forge rows when planted from outside the sandbox (the
controls), then shown to be impossible to plant from inside bubblewrap.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from carapace.db.connection import connect
from carapace.db.session import (
    SessionPaths,
    init_session_folder,
    insert_message_in,
    open_inbound,
)
from carapace.sandbox import SandboxSpec, bwrap_argv, bwrap_unusable_reason
from carapace.watch import journal_idle

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")

EVIL = ("evil", "Evil", "channel", "telegram", "attacker-chat", None)


def _session(root: Path) -> SessionPaths:
    paths = SessionPaths.of(root / "data", "ag-1", "sess-1")
    init_session_folder(paths)
    conn = open_inbound(paths)
    conn.execute(
        "INSERT INTO destinations VALUES ('home', 'Home', 'channel', 'cli', 'local', NULL)"
    )
    insert_message_in(conn, {"id": "in-1", "kind": "chat", "timestamp": "2026-03-01T12:00:00Z",
                             "content": '{"text":"hi"}'})  # fmt: skip
    conn.close()
    return paths


def _destinations(paths: SessionPaths) -> list[str]:
    conn = open_inbound(paths)  # the host's read-write open: where a hot journal is replayed
    try:
        return [r[0] for r in conn.execute("SELECT name FROM destinations ORDER BY name")]
    finally:
        conn.close()


def craft_hot_journal(inbound: Path, work: Path) -> bytes:
    """A journal whose rollback turns ``inbound`` into a copy that has the ``evil`` row."""
    forged = work / "forged.db"
    shutil.copyfile(inbound, forged)
    conn = sqlite3.connect(forged, isolation_level=None)
    conn.execute("PRAGMA journal_mode = PERSIST")
    conn.execute("INSERT INTO destinations VALUES (?, ?, ?, ?, ?, ?)", EVIL)
    conn.execute("PRAGMA synchronous = OFF")  # journal pages hit the file at once, nRec=-1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM destinations WHERE name='evil'")
    conn.execute("UPDATE messages_in SET content='{}'")
    journal = Path(f"{forged}-journal").read_bytes()  # the pre-images: the forged state
    conn.execute("ROLLBACK")
    conn.close()
    assert journal[:8] == bytes.fromhex("d9d505f920a163d7")  # a live journal header
    return journal


def craft_wal(inbound: Path, work: Path) -> bytes:
    """A ``-wal`` whose frames hold the pages of a copy that has the ``evil`` row."""
    forged = work / "walforged.db"
    shutil.copyfile(inbound, forged)
    conn = sqlite3.connect(forged, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("INSERT INTO destinations VALUES (?, ?, ?, ?, ?, ?)", EVIL)
    wal = Path(f"{forged}-wal").read_bytes()
    conn.close()
    return wal


def test_controls_crafted_files_do_forge_rows_outside_a_sandbox(tmp_path: Path) -> None:
    """Without the sandbox the attack works: the test's weapons are real."""
    for name, craft in (("inbound.db-journal", craft_hot_journal), ("inbound.db-wal", craft_wal)):
        paths = _session(tmp_path / name)
        assert _destinations(paths) == ["home"]
        (paths.root / name).write_bytes(craft(paths.inbound, tmp_path / name))
        assert _destinations(paths) == ["evil", "home"], name


@needs_bwrap
def test_sandboxed_runner_cannot_plant_a_hot_journal_or_wal(tmp_path: Path) -> None:
    paths = _session(tmp_path / "home")
    weapons = tmp_path / "home" / "groups" / "main"  # the agent's own (writable) folder
    weapons.mkdir(parents=True)
    (weapons / "journal").write_bytes(craft_hot_journal(paths.inbound, tmp_path))
    (weapons / "wal").write_bytes(craft_wal(paths.inbound, tmp_path))
    root, inbound = paths.root, paths.inbound
    code = f"""
    import json, os, shutil, sqlite3
    root, weapons = {str(root)!r}, {str(weapons)!r}
    journal, wal = root + "/inbound.db-journal", root + "/inbound.db-wal"
    out = {{}}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except OSError as exc:
            out[name] = exc.errno
    def write_into(path, src):
        with open(path, "r+b") as fh:
            fh.write(open(src, "rb").read())
    attempt("write_journal", lambda: write_into(journal, weapons + "/journal"))
    attempt("copy_journal", lambda: shutil.copyfile(weapons + "/journal", journal))
    attempt("unlink_journal", lambda: os.unlink(journal))
    attempt("rename_over_journal", lambda: os.rename(weapons + "/journal", journal))
    attempt("plant_wal", lambda: shutil.copyfile(weapons + "/wal", wal))
    attempt("new_file", lambda: open(root + "/x", "wb").close())
    attempt("rename_inbound", lambda: os.rename(root + "/inbound.db", root + "/old.db"))
    attempt("truncate_journal", lambda: os.truncate(journal, 0))
    # The runner's own file stays writable.
    c = sqlite3.connect(root + "/outbound.db", isolation_level=None)
    c.execute("PRAGMA journal_mode = PERSIST")
    c.execute("INSERT INTO session_state VALUES ('k', 'v', 't')")
    c.close()
    out["outbound_write"] = "ok"
    print(json.dumps(out))
    """
    spec = SandboxSpec(session_dir=root, agent_dir=weapons,
                       runner_argv=[sys.executable, "-c", textwrap.dedent(code)])  # fmt: skip
    res = subprocess.run(bwrap_argv(spec), capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("outbound_write") == "ok"
    assert all(v != "ok" for v in out.values()), out  # every attempt failed (EROFS / EBUSY)
    assert not Path(f"{inbound}-wal").exists()
    assert sorted(p.name for p in root.iterdir()) == [
        ".heartbeat", "conversations", "inbound.db", "inbound.db-journal", "outbound.db",
        "outbound.db-journal", "outbox",
    ]  # fmt: skip
    # Host reads are unaffected: no forged row, the real rows intact.
    assert _destinations(paths) == ["home"]
    conn = open_inbound(paths)
    assert [r[0] for r in conn.execute("SELECT id FROM messages_in")] == ["in-1"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "persist"
    conn.close()
    out_conn = connect(paths.outbound, "session", readonly=True)
    assert out_conn.execute("SELECT value FROM session_state").fetchone()[0] == "v"
    out_conn.close()


@needs_bwrap
def test_runner_watch_sees_persist_commits_inside_the_sandbox(tmp_path: Path) -> None:
    """The runner's own watcher (folder watch, ``INBOUND_NAMES``) wakes on a host commit in
    ``journal_mode=PERSIST`` (no journal deletion: the bound journal closed after a write),
    and its read-only connection sees the row at once."""
    paths = _session(tmp_path / "home")
    agent = tmp_path / "home" / "groups" / "main"
    agent.mkdir(parents=True)
    code = f"""
    import json, time
    from pathlib import Path
    from carapace.db.session import SessionPaths, open_inbound
    from carapace.runner.loop import INBOUND_NAMES
    from carapace.watch import DirWatcher
    paths = SessionPaths(Path({str(paths.root)!r}))
    w = DirWatcher()
    w.add(paths.root, names=INBOUND_NAMES)
    conn = open_inbound(paths, readonly=True)
    count = lambda: conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0]
    before = count()
    print("ready", flush=True)
    woke = bool(w.wait(10.0))
    t0 = time.monotonic()
    while count() == before and time.monotonic() - t0 < 5:
        time.sleep(0.005)
    print(json.dumps({{"inotify": w.uses_inotify, "woke": woke, "before": before,
                      "after": count()}}))
    """
    spec = SandboxSpec(session_dir=paths.root, agent_dir=agent,
                       runner_argv=[sys.executable, "-c", textwrap.dedent(code)])  # fmt: skip
    proc = subprocess.Popen(bwrap_argv(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        conn = open_inbound(paths)
        insert_message_in(conn, {"id": "in-2", "kind": "chat",
                                 "timestamp": "2026-03-01T12:01:00Z", "content": "{}"})  # fmt: skip
        conn.close()
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1]) == {
        "inotify": True, "woke": True, "before": 1, "after": 2,
    }  # fmt: skip
    assert paths.inbound_journal.is_file()  # PERSIST: never deleted
    assert paths.inbound_journal.stat().st_size > 0  # never truncated either
    assert journal_idle(str(paths.inbound_journal))  # its header zeroed by the commit


def test_nanoclaw_folder_switches_to_persist_on_first_host_open(tmp_path: Path) -> None:
    """A NanoClaw session folder (DELETE mode, no journal file) becomes PERSIST when the host
    first opens it read-write; NanoClaw reading it back still works (docs/compat.md)."""
    paths = SessionPaths.of(tmp_path / "data", "ag-1", "sess-1")
    paths.root.mkdir(parents=True)
    nc = sqlite3.connect(paths.inbound, isolation_level=None)
    nc.execute("PRAGMA journal_mode = DELETE")
    nc.execute("CREATE TABLE destinations (name TEXT PRIMARY KEY, display_name TEXT, "
               "type TEXT NOT NULL, channel_type TEXT, platform_id TEXT, agent_group_id TEXT)")  # fmt: skip
    nc.close()
    assert not paths.inbound_journal.exists()
    conn = open_inbound(paths)
    conn.execute("INSERT INTO destinations VALUES ('home', NULL, 'channel', 'cli', 'x', NULL)")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "persist"
    conn.close()
    assert paths.inbound_journal.is_file()
    nc = sqlite3.connect(paths.inbound, isolation_level=None)
    nc.execute("PRAGMA journal_mode = DELETE")  # what NanoClaw does: deletes the journal
    assert nc.execute("SELECT name FROM destinations").fetchall() == [("home",)]
    nc.close()
