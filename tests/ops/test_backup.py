"""Backup while messages flow through a running host; restore into a fresh home."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ops_rig import LiveHost

from carapace.channels.fake import make_event
from carapace.cli import main
from carapace.config import Home
from carapace.db.session import SessionPaths
from carapace.ops.backup import BackupError, backup, restore


def _messages(home: Home) -> set[str]:
    conn = sqlite3.connect(home.central_db)
    rows = conn.execute("SELECT agent_group_id, id FROM sessions").fetchall()
    conn.close()
    out: set[str] = set()
    for ag, sid in rows:
        p = SessionPaths.of(home.data_dir, ag, sid).inbound
        c = sqlite3.connect(p)
        out.update(r[0].split(":")[0] for r in c.execute("SELECT id FROM messages_in"))
        c.close()
    return out


def _route(live: LiveHost, text: str, platform: str, mid: str) -> None:
    res = live.call(live.host.route(make_event(text, platform_id=platform, id=mid)))
    assert res.routed, res


def test_backup_while_messages_flow_then_restore_finds_every_message(
    live_host: LiveHost, tmp_path: Path
) -> None:
    chats = [f"chat-{i}" for i in range(6)]
    for c in chats:
        live_host.wire_chat(c)
    sent: list[str] = []
    for i, c in enumerate(chats):
        _route(live_host, f"before {i}", c, f"before-{i}")
        sent.append(f"before-{i}")
    live_host.runners_started()  # before files are planted in the group folder
    group = live_host.home.group_dir("ag")
    (group / "notes.md").write_text("remember the milk")
    (group / "sub").mkdir()
    (group / "sub" / "deep.txt").write_text("deep")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    os.symlink(secret, group / "link-to-secret")  # planted by an agent
    os.mkfifo(group / "fifo")  # would block a naive reader

    during: list[str] = []

    def flow(step: str) -> None:  # a message routed by the running host between steps
        mid = f"during-{len(during)}"
        _route(live_host, f"during {step}", chats[len(during) % len(chats)], mid)
        during.append(mid)

    rep = backup(live_host.home, tmp_path / "bk", on_step=flow)
    assert rep.sessions == len(chats) and during
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert "groups/ag/notes.md" in paths and "groups/ag/sub/deep.txt" in paths
    skipped = {s["path"]: s["why"] for s in manifest["skipped"]}
    assert skipped["groups/ag/link-to-secret"] == "symlink"
    assert "groups/ag/fifo" in skipped
    assert b"host secret" not in b"".join(p.read_bytes() for p in (tmp_path / "bk").rglob("*")
                                          if p.is_file())  # fmt: skip

    fresh = Home(tmp_path / "fresh")
    restore(tmp_path / "bk", fresh)
    found = _messages(fresh)
    assert set(sent) <= found  # every message routed before the backup began
    # each message routed during the backup is there unless its session was copied already
    assert found <= set(sent) | set(during)
    assert (fresh.group_dir("ag") / "sub" / "deep.txt").read_text() == "deep"
    assert not (fresh.group_dir("ag") / "link-to-secret").exists()
    # the restored home opens as a home
    from carapace.bootstrap import open_home

    db, _ = open_home(fresh)
    assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == len(chats)
    db.close()


def test_a_message_acknowledged_but_not_yet_written_is_in_the_backup(
    live_host: LiveHost, tmp_path: Path
) -> None:
    """A message the host acknowledged (durable in its ingest journal) while its session's
    writer was busy: the backup copies the journal before the session files, so the
    restored home has it, and the first host started there writes it into the session."""
    import threading

    live_host.wire_chat("chat-j")
    _route(live_host, "first", "chat-j", "j-0")
    host = live_host.host
    [sid] = [r[0] for r in host.db.execute("SELECT id FROM sessions")]
    gate = threading.Event()
    held: list[Any] = []

    async def hold() -> None:
        session = host.sessions.get(sid)
        assert session is not None
        held.append(asyncio.ensure_future(host.sessions.writers.call(
            sid, host.sessions.paths(session), lambda _c: gate.wait(30))))  # fmt: skip

    live_host.call(hold())
    live_host.call(host.route(make_event("second", platform_id="chat-j", id="j-1"),
                              settle=False))  # fmt: skip
    try:
        backup(live_host.home, tmp_path / "bk")
    finally:
        gate.set()
    fresh = Home(tmp_path / "fresh")
    restore(tmp_path / "bk", fresh)
    assert _messages(fresh) == {"j-0"}  # the copy of the session was taken before it
    restored = LiveHost(fresh)
    try:
        assert _messages(fresh) == {"j-0", "j-1"}  # written at start, from the journal
    finally:
        restored.close()


def test_restore_refuses_live_or_nonempty_home_and_bad_checksums(
    live_host: LiveHost, tmp_path: Path
) -> None:
    live_host.wire_chat("c1")
    _route(live_host, "hello", "c1", "m1")
    backup(live_host.home, tmp_path / "bk")
    with pytest.raises(BackupError, match="host is running"):
        restore(tmp_path / "bk", live_host.home, force=True)
    other = Home(tmp_path / "other")
    restore(tmp_path / "bk", other)
    with pytest.raises(BackupError, match="not empty"):
        restore(tmp_path / "bk", other)
    # tampered backup: nothing is written
    target = next(p for p in (tmp_path / "bk" / "data").rglob("inbound.db"))
    target.write_bytes(target.read_bytes() + b"x")
    third = Home(tmp_path / "third")
    with pytest.raises(BackupError, match="checksum"):
        restore(tmp_path / "bk", third)
    assert not third.root.exists()


def test_restore_rejects_manifest_paths_outside_the_home(tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    bk.mkdir()
    (bk / "manifest.json").write_text(json.dumps({"format": 1, "files": [
        {"path": "../escape", "sha256": "x", "size": 1}]}))  # fmt: skip
    with pytest.raises(BackupError, match="bad entry"):
        restore(bk, Home(tmp_path / "h"))
    assert not (tmp_path / "escape").exists()


def test_restore_force_moves_old_contents_aside(live_host: LiveHost, tmp_path: Path) -> None:
    live_host.wire_chat("c1")
    _route(live_host, "hello", "c1", "m1")
    runner = CliRunner()
    r = runner.invoke(main, ["backup", "--home", str(live_host.home.root), str(tmp_path / "bk")])
    assert r.exit_code == 0, r.output
    other = Home(tmp_path / "other")
    (other.data_dir).mkdir(parents=True)
    (other.data_dir / "old.txt").write_text("old")
    r = runner.invoke(main, ["restore", "--home", str(other.root), str(tmp_path / "bk")])
    assert r.exit_code != 0 and "not empty" in r.output
    r = runner.invoke(main, ["restore", "--force", "--home", str(other.root), str(tmp_path / "bk")])
    assert r.exit_code == 0, r.output
    aside: list[Any] = list(other.root.glob("pre-restore-*/data/old.txt"))
    assert len(aside) == 1 and "m1" in _messages(other)


def test_backup_refuses_a_destination_inside_the_home(live_host: LiveHost) -> None:
    dest = live_host.home.group_dir("main-ish") / "bk"
    with pytest.raises(BackupError, match="inside the home"):
        backup(live_host.home, dest)
    assert not dest.exists()


def test_bad_destinations_are_one_line_errors(live_host: LiveHost, tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(live_host.home.root)
    (tmp_path / "file").write_text("x")
    for dest in (tmp_path / "file", tmp_path / "file" / "sub"):
        r = runner.invoke(main, ["backup", "--home", home, str(dest)])
        assert r.exit_code == 1 and r.output.startswith("Error: "), r.output
        assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(main, ["restore", "--home", str(tmp_path / "h"), str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "not a directory" in r.output
