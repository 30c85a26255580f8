"""``carapace web login-link`` / ``hook-secret`` and ``[web]`` mistakes at start, through the
real command line."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

CARAPACE = [sys.executable, "-m", "carapace"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CARAPACE, *args], capture_output=True, text=True, timeout=timeout)


def test_login_link_creates_the_user_and_prints_a_link(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = _run("web", "login-link", "--home", str(home), "--user", "zoe", "--role", "admin")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("http://127.0.0.1:8377/login?token=")
    assert "enabled = true" in r.stderr  # says the server is off
    conn = sqlite3.connect(home / "data" / "v2.db")
    try:
        assert conn.execute("SELECT kind FROM users WHERE id='web:zoe'").fetchone() == ("web",)
        assert conn.execute("SELECT role FROM user_roles WHERE user_id='web:zoe'").fetchone() == (
            "admin",
        )
    finally:
        conn.close()
    token = r.stdout.strip().split("token=")[1]
    web = sqlite3.connect(home / "data" / "web.db")
    try:  # only a hash is kept
        assert token not in str(web.execute("SELECT * FROM login_links").fetchall())
    finally:
        web.close()
    bad = _run("web", "login-link", "--home", str(home), "--user", "Bad Name!")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "bad web user name" in bad.stderr


def test_hook_secret_goes_to_the_secrets_file_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _run("init", "--home", str(home))
    r = _run("web", "hook-secret", "--home", str(home), "ci")
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    path = home / "secrets.env"
    assert f"WEBHOOK_CI_SECRET={secret}" in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for db in (home / "data").glob("*.db"):
        assert secret.encode() not in db.read_bytes()
    again = _run("web", "hook-secret", "--home", str(home), "ci").stdout.strip()
    assert path.read_text().count("WEBHOOK_CI_SECRET=") == 1 and again != secret
    bad = _run("web", "hook-secret", "--home", str(home), "Not/Good")
    assert bad.returncode != 0 and "bad hook name" in bad.stderr


def test_a_public_bind_without_tls_or_proxy_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _run("init", "--home", str(home))
    (home / "carapace.toml").write_text('[web]\nenabled = true\nhost = "0.0.0.0"\n')
    r = _run("run", "--home", str(home), timeout=30)
    assert r.returncode != 0
    assert "not a loopback address" in r.stderr and "behind_proxy" in r.stderr


def test_doctor_reports_a_bad_web_section(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _run("init", "--home", str(home))
    (home / "carapace.toml").write_text('[web]\nenabled = true\nport = "http"\n')
    r = _run("doctor", "--home", str(home))
    assert "bad-config" in r.stdout + r.stderr and "web.port" in r.stdout + r.stderr
