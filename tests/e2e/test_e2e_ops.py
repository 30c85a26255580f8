"""As an operator: a host with JSON logs and metrics; back up while chatting; restore on a
fresh home and find every message; graph the metrics; one-screen status."""

from __future__ import annotations

import json
import socket
import sqlite3
import urllib.request
from pathlib import Path

from e2e_helpers import E2E, rows, wait_for
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _inbound_texts(home: Path) -> list[str]:
    found = []
    for db in sorted(home.glob("data/v2-sessions/*/*/inbound.db")):
        for (content,) in rows(db, "SELECT content FROM messages_in ORDER BY seq"):
            found.append(json.loads(content).get("text"))
    return found


def test_backup_while_chatting_restore_and_metrics(e2e: E2E, tmp_path: Path) -> None:
    port = _free_port()
    e2e.write_settings(f'log_format = "json"\n[metrics]\nport = {port}\n')
    e2e.start_host()
    wait_for(lambda: _scrape(port), what="metrics endpoint")
    texts = [f"note {i}" for i in range(3)]
    for t in texts[:2]:
        assert e2e.send(t).returncode == 0
    r = e2e.cli("backup", "--home", str(e2e.home), str(tmp_path / "bk1"))
    assert r.returncode == 0, r.stderr
    assert e2e.send(texts[2]).returncode == 0
    r = e2e.cli("backup", "--home", str(e2e.home), "--json", str(tmp_path / "bk2"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sessions"] >= 1

    m = _scrape(port)
    assert m["carapace_messages_routed_total"] == 3
    assert m["carapace_messages_delivered_total"] >= 3
    assert m["carapace_roundtrip_seconds_count"] >= 1
    status = json.loads(e2e.cli("status", "--home", str(e2e.home), "--json").stdout)
    assert status["host_up"] is True and status["chats_by_channel"] == {"cli": 1}

    r = e2e.cli("restore", "--home", str(e2e.home), str(tmp_path / "bk2"))
    assert r.returncode != 0 and "host is running" in r.stderr
    e2e.stop_host()
    log = (e2e.home / "logs" / "carapace.log").read_text().splitlines()
    records = [json.loads(line) for line in log]  # every line is one JSON object
    assert any(rec.get("message_id") and rec.get("session_id") for rec in records)

    fresh = tmp_path / "fresh"
    r = e2e.cli("restore", "--home", str(fresh), str(tmp_path / "bk2"))
    assert r.returncode == 0, r.stderr
    assert _inbound_texts(fresh) == texts
    r = e2e.cli("restore", "--home", str(tmp_path / "fresh1"), str(tmp_path / "bk1"))
    assert r.returncode == 0 and _inbound_texts(tmp_path / "fresh1") == texts[:2]
    # the restored home runs and answers
    e2e.home = fresh
    e2e.start_host()
    assert "note 3" not in _inbound_texts(fresh)
    assert e2e.send("after restore").returncode == 0
    e2e.stop_host()
    conn = sqlite3.connect(fresh / "data" / "v2.db")
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    conn.close()
