"""``carapace doctor`` on NanoClaw v2 folders and carapace homes (read-only, exit codes)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from carapace.cli import main
from carapace.config import Home
from carapace.migrate.doctor import diagnose
from carapace.testing.v1fixtures import V2Home, make_nanoclaw_v2_home


def codes(home: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in diagnose(Home(home)).findings:
        out.setdefault(f.code, []).append(f.level)
    return out


def files_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def sql(v2: V2Home, statement: str, *args: object) -> None:
    conn = sqlite3.connect(v2.central_db, isolation_level=None)
    conn.execute(statement, args)
    conn.close()


def make_private(root: Path) -> None:
    """A clean home is owner-only (doctor flags wider modes: ``wide-mode``)."""
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & 0o700)


def test_clean_nanoclaw_home_is_ok_and_untouched(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nc")
    make_private(v2.root)
    before = files_hash(v2.root)
    res = CliRunner().invoke(main, ["doctor", "--home", str(v2.root), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["ok"] is True and data["errors"] == 0
    # its Telegram chat has an adapter, which needs its bot token: a warning, not a problem
    codes = [f["code"] for f in data["findings"] if f["code"] != "sizes"]
    assert codes == ["pending-migrations", "channel-not-configured"]
    assert files_hash(v2.root) == before


def test_everything_doctor_reports(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nc", extra_migrations=("add-discord-thing",))
    t = "2026-01-10T08:00:00.000Z"
    sql(v2, "INSERT INTO agent_groups VALUES ('ag-2', 'Bare', 'bare', NULL, ?)", t)
    sql(v2, "INSERT INTO messaging_groups VALUES ('mg-2', 'discord', 'discord:1:2', NULL, 1, "
            "'strict', ?, NULL)", t)  # fmt: skip
    sql(v2, "INSERT INTO messaging_group_agents VALUES ('mga-2', 'mg-2', 'ag-2', NULL, NULL, ?, "
            "NULL, NULL, NULL, NULL)", t)  # fmt: skip
    sql(v2, "INSERT INTO sessions VALUES ('sess-gone', 'ag-2', 'mg-2', NULL, NULL, 'active', "
            "'stopped', ?, ?)", t, t)  # fmt: skip
    sql(v2, "DELETE FROM user_roles")
    sql(v2, "INSERT INTO users VALUES ('telegram:7', 'telegram', NULL, ?)", t)
    for _ in range(2):
        sql(v2, "INSERT INTO user_roles VALUES ('telegram:7', 'admin', NULL, NULL, ?)", t)
    (v2.session_dir / "outbound.db").write_bytes(b"this is not a database, just junk" * 100)
    found = codes(v2.root)
    assert found["unknown-migration"] == ["warning"]
    assert found["null-engage"] == ["warning"] * 4
    assert found["no-group-folder"] == ["warning"]
    assert found["no-container-config"] == ["warning"]
    assert found["no-session-folder"] == ["warning"]
    assert found["session-db-unreadable"] == ["error"]
    from carapace.channels.registry import ADAPTERS

    inert = [ct for ct in ("discord", "telegram") if ct not in ADAPTERS]  # chats, no adapter
    assert found.get("unknown-channel", []) == ["warning"] * len(inert)
    assert found["duplicate-global-role"] == ["warning"]
    assert found["no-owner"] == ["warning"]
    res = CliRunner().invoke(main, ["doctor", "--home", str(v2.root)])
    assert res.exit_code == 1
    assert "read as 'mention'" in res.output and "PROBLEMS" in res.output


def test_bash_without_sandbox_is_unsafe(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", "--home", str(home)]).exit_code == 0
    conn = sqlite3.connect(home / "data" / "v2.db", isolation_level=None)
    conn.execute('UPDATE container_configs SET settings=\'{"bash":"allowed"}\'')
    conn.close()
    (home / "carapace.toml").write_text('runner_backend = "subprocess"\n')  # default is auto
    assert codes(home)["bash-unsandboxed"] == ["warning"]
    (home / "carapace.toml").write_text('runner_backend = "bwrap"\n')
    assert "bash-unsandboxed" not in codes(home)


def test_fresh_carapace_home_is_clean(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", "--home", str(home)]).exit_code == 0
    res = CliRunner().invoke(main, ["doctor", "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert "0 error(s), 0 warning(s)" in res.output


def test_missing_home_is_an_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["doctor", "--home", str(tmp_path / "none"), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)["findings"][0]["code"] == "no-central-db"


def test_only_adapters_that_exist_are_named(tmp_path: Path) -> None:
    """Issue 18 item 4: a migrated Telegram home is told its chats have no adapter; the list
    of adapters comes from the channel registry and names only importable adapters."""
    import importlib

    from carapace.channels.registry import ADAPTERS, available_channels
    from carapace.migrate.mapping import KNOWN_CHANNELS

    assert available_channels() == KNOWN_CHANNELS
    for module in ADAPTERS.values():
        importlib.import_module(module)
    v2 = make_nanoclaw_v2_home(tmp_path / "nc")
    findings = [f for f in diagnose(Home(v2.root)).findings if f.code == "unknown-channel"]
    assert len(findings) == ("telegram" not in ADAPTERS)
    if findings:
        assert "telegram" in findings[0].subject and "cli" in findings[0].message


def test_full_disk_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from carapace.migrate import doctor

    home = Home(tmp_path / "home")
    assert CliRunner().invoke(main, ["init", "--home", str(home.root)]).exit_code == 0
    with monkeypatch.context() as mp:
        mp.setattr(doctor, "MIN_FREE_BYTES", 1 << 62)  # more than any real disk has free
        rep = diagnose(home)
    assert "disk-full" in [f.code for f in rep.findings if f.level == "error"]
    assert "disk-full" not in [f.code for f in diagnose(home).findings]


def test_wrong_type_config_is_a_doctor_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", "--home", str(home)]).exit_code == 0
    (home / "carapace.toml").write_text('max_runners = "eight"\n')
    res = CliRunner().invoke(main, ["doctor", "--home", str(home)])
    assert res.exit_code != 0, res.output
    assert "max_runners" in res.output


def test_claude_provider_without_its_sdk_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group on ``claude`` (NanoClaw's Claude Agent SDK provider) in a home without the
    claude extra: doctor says so (the runner would fail each message; it never falls back
    to another provider)."""
    import importlib.util

    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", "--home", str(home)]).exit_code == 0
    conn = sqlite3.connect(home / "data" / "v2.db", isolation_level=None)
    conn.execute("UPDATE container_configs SET provider='claude'")
    conn.close()
    assert "provider-unavailable" not in codes(home)  # installed here (the dev extra)
    real = importlib.util.find_spec

    def no_sdk(name: str, *args: object) -> object:
        return None if name == "claude_agent_sdk" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_sdk)
    assert codes(home)["provider-unavailable"] == ["error"]
    res = CliRunner().invoke(main, ["doctor", "--home", str(home)])
    assert res.exit_code == 1 and "carapace[claude]" in res.output
