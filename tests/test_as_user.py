"""The normal-user pass of ``make test`` (carapace/testing/as_user.py): when it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carapace.testing import as_user


def test_outside_ci_it_makes_nothing_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(as_user, "WORK", tmp_path / "work")
    made: list[list[str]] = []
    monkeypatch.setattr(as_user, "run", lambda argv, **kw: made.append(argv))
    assert as_user.main(["--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    if os.geteuid() == 0:
        assert "runs under CI=true" in out
    else:
        assert "ran as a normal user" in out
    assert made == [] and not (tmp_path / "work").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user the suite is the pass")
def test_as_root_in_ci_a_missing_python_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No Python the user can run (none found, none installable): an error, never a skip."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(as_user, "WORK", tmp_path / "work")
    monkeypatch.setattr(as_user, "run", lambda argv, **kw: None)
    monkeypatch.setattr(as_user, "ensure_user", lambda: None)
    monkeypatch.setattr(as_user, "install_python", lambda: None)
    monkeypatch.setattr(as_user, "usable_python", lambda env: None)
    assert as_user.main(["--repo", str(tmp_path)]) == 1
    assert "no Python 3.11 that user carapace-ci can run" in capsys.readouterr().err


def test_only_the_registries_settings_reach_the_users_install(tmp_path: Path) -> None:
    """Root's environment may hold keys: only ``PIP_*``, proxies and certificates pass."""
    env = as_user.passed_env({
        "PIP_INDEX_URL": "https://mirror/simple", "HTTPS_PROXY": "http://proxy:3128",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem", "ANTHROPIC_API_KEY": "sk-secret",
        "TELEGRAM_BOT_TOKEN": "123:abc", "HOME": "/root", "PYTHONPATH": "/root/x",
    })  # fmt: skip
    assert env == {"PIP_INDEX_URL": "https://mirror/simple", "HTTPS_PROXY": "http://proxy:3128",
                   "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem"}  # fmt: skip
    home, user_home = tmp_path / "root", tmp_path / "user"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text("[global]\nfind-links = /opt/wheels\n")
    as_user.copy_pip_config(home, user_home)
    assert (user_home / ".config" / "pip" / "pip.conf").read_text().endswith("/opt/wheels\n")
    assert not (user_home / ".pip").exists()
