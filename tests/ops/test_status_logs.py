"""``carapace status`` and the log formats (JSON lines, rotation)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from ops_rig import LiveHost

from carapace.channels.fake import make_event
from carapace.cli import main
from carapace.config import Home, Settings
from carapace.errors import ConfigError
from carapace.ops.logs import JsonFormatter, LogIds, configure, under_service_manager


def test_status_one_screen_with_host_up(live_host: LiveHost) -> None:
    live_host.wire_chat("c1")
    live_host.call(live_host.host.route(make_event("hi", platform_id="c1", id="m1")))
    home = live_host.home
    (home.root / "logs").mkdir()
    (home.root / "logs" / "carapace.log").write_text(
        json.dumps({"ts": "t1", "level": "error", "msg": "channel x fell over"}) + "\n"
        + "2026-01-01 00:00:00,000 ERROR carapace.host: text error\n"
        + "2026-01-01 00:00:00,000 INFO carapace.host: fine\n"
    )  # fmt: skip
    conn = sqlite3.connect(home.central_db)
    conn.execute("CREATE TABLE IF NOT EXISTS carapace_usage (id INTEGER PRIMARY KEY, at TEXT, "
                 "agent_group_id TEXT, input_tokens INTEGER, output_tokens INTEGER, "
                 "cost_usd REAL)")  # fmt: skip
    conn.execute("INSERT INTO carapace_usage (at, agent_group_id, input_tokens, output_tokens, "
                 "cost_usd) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'ag', 7, 3, 0.5)")  # fmt: skip
    conn.execute("INSERT INTO carapace_usage (at, agent_group_id, input_tokens, output_tokens, "
                 "cost_usd) VALUES ('2000-01-01T00:00:00Z', 'ag', 100, 100, 9)")  # fmt: skip
    conn.commit()
    conn.close()
    r = CliRunner().invoke(main, ["status", "--home", str(home.root), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["host_up"] is True and info["chats_by_channel"] == {"fake": 1}
    assert info["sessions"]["active"] == 1 and info["approvals_pending"] == 0
    assert info["usage_today"] == {"calls": 1, "input_tokens": 7, "output_tokens": 3,
                                   "cost_usd": 0.5}  # fmt: skip
    assert info["errors"] == ["t1 channel x fell over",
                              "2026-01-01 00:00:00,000 ERROR carapace.host: text error"]  # fmt: skip
    r = CliRunner().invoke(main, ["status", "--home", str(home.root)])
    assert r.exit_code == 0 and "host:       up" in r.output and "7 in / 3 out" in r.output


def test_status_of_a_stopped_empty_home(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["status", "--home", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert "host:       down" in r.output and "carapace init" in r.output


def test_json_lines_carry_ids_as_fields() -> None:
    log = logging.getLogger("carapace.test.jsonlogs")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    h = Keep()
    h.setFormatter(JsonFormatter())
    log.addHandler(h)
    log.setLevel(logging.INFO)
    try:
        LogIds(log, session_id="s1", agent_group_id="ag1").info("routed %s", "m1",
                                                                extra={"message_id": "m1"})  # fmt: skip
        log.warning('quote " and\nnewline', extra={"chat_id": "c1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(h)
    parsed = [json.loads(line) for line in "\n".join(records).splitlines()]
    assert len(parsed) == 3  # one line per event, even with a newline in the message
    assert parsed[0]["session_id"] == "s1" and parsed[0]["agent_group_id"] == "ag1"
    assert parsed[0]["message_id"] == "m1" and parsed[0]["msg"] == "routed m1"
    assert parsed[1]["chat_id"] == "c1" and parsed[1]["msg"] == 'quote " and\nnewline'
    assert parsed[2]["level"] == "error" and "ValueError: boom" in parsed[2]["exc"]


def test_configure_rotates_file_unless_under_service_manager(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    root = logging.getLogger("carapace.test.rotation")
    root.propagate = False
    root.setLevel(logging.INFO)
    s = Settings(extra={"log_format": "json", "logs": {"max_bytes": 300, "backups": 2}})
    assert configure(home, s, env={"INVOCATION_ID": "x"}, root=root) is None
    handler = configure(home, s, env={}, root=root)
    assert handler is not None
    for i in range(40):
        root.info("event %d", i, extra={"session_id": f"s{i}"})
    handler.close()
    root.removeHandler(handler)
    files = sorted(p.name for p in (home.root / "logs").iterdir())
    assert files == ["carapace.log", "carapace.log.1", "carapace.log.2"]
    for p in (home.root / "logs").iterdir():
        for line in p.read_text().splitlines():
            assert json.loads(line)["session_id"].startswith("s")
    assert under_service_manager({"XPC_SERVICE_NAME": "io.carapace.host"})
    with pytest.raises(ConfigError):
        configure(home, Settings(extra={"log_format": "xml"}), env={}, root=root)
    with pytest.raises(ConfigError):
        configure(home, Settings(extra={"logs": {"backups": "many"}}), env={}, root=root)


def test_host_routing_and_delivery_lines_carry_ids(live_host: LiveHost) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    h = Keep(level=logging.INFO)
    h.setFormatter(JsonFormatter())
    lg = logging.getLogger("carapace.host")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        live_host.wire_chat("c9")
        live_host.call(live_host.host.route(make_event("hi", platform_id="c9", id="m9")))
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)
    routed = [json.loads(x) for x in lines if json.loads(x)["msg"].startswith("routed")]
    assert routed and routed[0]["message_id"].startswith("m9:") and routed[0]["chat_id"] == "c9"
    assert routed[0]["session_id"].startswith("sess-") and routed[0]["channel_type"] == "fake"


def test_progress_draws_on_a_terminal_only() -> None:
    import io

    from carapace.ops.progress import progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    with progress("backup", 3, stream=quiet) as advance:
        for i in range(3):
            advance(f"step {i}")
    assert quiet.getvalue() == ""
    tty = Tty()
    with progress("backup", 3, stream=tty) as advance:
        for i in range(3):
            advance(f"step {i}")
    assert "backup" in tty.getvalue()
