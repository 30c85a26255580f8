"""The `carapace admin` command line: argv, output, exit codes, both transports."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from admin_helpers import StandInHost
from click.testing import CliRunner, Result

from carapace.admin.client import parse_words
from carapace.bootstrap import init_home
from carapace.commands.admin import admin
from carapace.config import Home
from carapace.db.central import open_central


def run(home: Home, *words: str) -> Result:
    return CliRunner().invoke(admin, ["--home", str(home.root), *words])


def _normalize(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _normalize(v, ids)
            for k, v in value.items()
            if not k.endswith("_at") and k not in ("path", "id")
        }
    if isinstance(value, list):
        return [_normalize(v, ids) for v in value]
    if isinstance(value, str):
        for real, alias in ids.items():
            value = value.replace(real, alias)
    return value


SCRIPT: list[list[str]] = [
    ["groups", "list"],
    ["groups", "get", "main"],
    ["groups", "create", "--name", "Work", "--folder", "work", "--id", "ag-work-1"],
    ["groups", "config", "update", "work", "--model", "m1", "--max-messages-per-prompt", "3"],
    [
        "groups",
        "config",
        "add-mcp-server",
        "work",
        "--name",
        "fs",
        "--command",
        "x",
        "--args",
        '["a"]',
    ],
    ["groups", "config", "get", "work"],
    [
        "messaging-groups",
        "create",
        "--channel-type",
        "tg",
        "--platform-id",
        "5",
        "--name",
        "Ops",
        "--unknown-sender-policy",
        "request_approval",
    ],
    ["users", "create", "--id", "tg:5", "--kind", "tg", "--display-name", "Bo"],
    ["roles", "grant", "--user", "tg:5", "--role", "admin", "--group", "work"],
    ["members", "list", "--group", "work"],
    [
        "destinations",
        "add",
        "--agent-group-id",
        "main",
        "--local-name",
        "work",
        "--target-type",
        "agent",
        "--target-id",
        "work",
    ],
    ["destinations", "list"],
    ["roles", "list"],
    ["approvals", "list"],
    ["sessions", "list"],
    ["groups", "get", "nope"],
    ["groups", "create", "--name", "X"],
    [
        "wirings",
        "create",
        "--messaging-group-id",
        "mg-x",
        "--agent-group-id",
        "main",
        "--engage-mode",
        "never",
    ],
    ["frobnicate", "list"],
    ["groups", "delete", "work"],
    ["groups", "delete", "work", "--force"],
    ["groups", "list"],
]


def _play(home: Home) -> list[tuple[int, Any]]:
    conn = open_central(home.central_db)
    main = conn.execute("SELECT id FROM agent_groups WHERE folder='main'").fetchone()[0]
    cli = conn.execute("SELECT id FROM messaging_groups WHERE channel_type='cli'").fetchone()[0]
    conn.close()
    out = []
    for words in SCRIPT:
        res = run(home, "--json", *words)
        data = json.loads(res.stdout)
        out.append((res.exit_code, _normalize(data, {main: "MAIN", cli: "CLI"})))
    return out


def test_both_transports_give_the_same_results(tmp_path: Any) -> None:
    direct_home = Home(tmp_path / "d")
    socket_home = Home(tmp_path / "s")
    init_home(direct_home)
    init_home(socket_home)
    direct = _play(direct_home)
    host = StandInHost(socket_home)
    try:
        via_socket = _play(socket_home)
        assert host.requests == len(SCRIPT)
    finally:
        host.close()
    assert via_socket == direct
    codes = [c for c, _ in direct]
    assert codes.count(1) == 5 and codes.count(2) == 0


def test_direct_mode_says_so_on_stderr(home: Home) -> None:
    res = run(home, "groups", "list")
    assert res.exit_code == 0
    assert res.stderr.strip() == f"no host running for {home.root}; read directly"
    assert "main" in res.stdout and "FOLDER" in res.stdout
    res = run(home, "users", "create", "--id", "tg:1", "--kind", "tg")
    assert res.stderr.strip() == f"no host running for {home.root}; applied directly"


def test_socket_mode_is_silent_on_stderr(home: Home, host: StandInHost) -> None:
    res = run(home, "groups", "list")
    assert res.exit_code == 0 and res.stderr == ""
    assert host.requests == 1


def test_stale_socket_falls_back_to_direct(home: Home) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(home.admin_socket))
    s.close()  # the file stays; nobody listens
    res = run(home, "groups", "list", "--json")
    assert res.exit_code == 0 and "applied directly" not in res.stderr
    assert "read directly" in res.stderr
    assert json.loads(res.stdout)[0]["folder"] == "main"


def test_errors_exit_codes_and_shapes(home: Home) -> None:
    res = run(home, "groups", "get", "nope")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-1] == "error (not-found): no agent group 'nope'"
    res = run(home, "--json", "groups", "get", "nope")
    assert res.exit_code == 1
    assert json.loads(res.stdout) == {
        "error": {"code": "not-found", "message": "no agent group 'nope'"}
    }
    res = run(home, "groups", "list", "--limit", "2", "--limit", "3")
    assert res.exit_code == 1 and "given twice" in res.stderr


def test_missing_home_is_a_transport_error(tmp_path: Any) -> None:
    res = CliRunner().invoke(admin, ["--home", str(tmp_path / "none"), "groups", "list"])
    assert res.exit_code == 2
    assert "no carapace home" in res.stderr
    assert not (tmp_path / "none").exists()


def test_bad_host_response_is_a_transport_error(home: Home) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(home.admin_socket))
    srv.listen(1)

    def answer() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"garbage\n")
        conn.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        res = run(home, "groups", "list")
    finally:
        t.join(timeout=5)
        srv.close()
    assert res.exit_code == 2
    assert res.stderr.startswith("error (transport-error):")


def test_help(home: Home) -> None:
    for words in ([], ["help"], ["--help"], ["-h"]):
        res = run(home, *words)
        assert res.exit_code == 0, words
        assert "Resources:" in res.stdout and "messaging-groups" in res.stdout
    for words in (["groups", "help"], ["groups", "--help"], ["groups", "get", "--help"]):
        res = run(home, *words)
        assert res.exit_code == 0
        assert "groups config add-mcp-server" in res.stdout and "--cli-scope" in res.stdout
    res = run(home, "groups")
    assert res.exit_code == 2 and "Verbs:" in res.stdout
    res = run(home, "--json", "wirings", "help")
    assert "--priority N" in json.loads(res.stdout)


def test_positional_ids_and_equals_syntax(home: Home) -> None:
    res = run(home, "--json", "groups", "get", "main")
    main_id = json.loads(res.stdout)["id"]
    res = run(home, "--json", "groups", "get", main_id)  # dashes and all
    assert res.exit_code == 0 and json.loads(res.stdout)["folder"] == "main"
    res = run(home, "--json", "groups", "update", f"--id={main_id}", "--name=Main Two")
    assert json.loads(res.stdout)["name"] == "Main Two"
    res = run(home, "--json", "wirings", "list", "--agent-group-id", "main")
    w = json.loads(res.stdout)[0]
    res = run(home, "--json", "wirings", "update", w["id"], "--priority", "-3")
    assert json.loads(res.stdout)["priority"] == -3


def test_parse_words() -> None:
    assert parse_words(["groups", "get", "x", "--json-ish", "--force", "--name", "a b"]) == (
        ["groups", "get", "x"],
        {"json-ish": True, "force": True, "name": "a b"},
    )
    assert parse_words(["--k=--v", "-h"]) == ([], {"k": "--v", "help": True})
