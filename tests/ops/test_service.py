"""Service units: generated, validated, installed into a directory of the test's choosing."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from carapace.cli import main
from carapace.config import Home
from carapace.ops import service as svc


def _spec(home: Path, version: int = 252) -> svc.ServiceSpec:
    return svc.ServiceSpec(Home(home), "/usr/bin/python3", "systemd", version)


def test_systemd_unit_names_home_env_file_and_restarts(tmp_path: Path) -> None:
    text = svc.systemd_unit(_spec(tmp_path / "my home"))
    lines = text.splitlines()
    assert f'Environment="CARAPACE_HOME={tmp_path}/my home"' in lines
    assert f"EnvironmentFile=-{tmp_path}/my home/carapace.env" in lines
    assert f'ExecStart="/usr/bin/python3" -m carapace run --home "{tmp_path}/my home"' in lines
    assert "Restart=always" in lines and "StartLimitIntervalSec=0" in lines
    assert "RestartSteps=6" not in lines  # systemd 252 does not know it
    assert "RestartSteps=6" in svc.systemd_unit(_spec(tmp_path, 254)).splitlines()
    assert svc.installed_home_text(text) == f"{tmp_path}/my home"


def test_systemd_unit_escapes_specifiers_and_quotes(tmp_path: Path) -> None:
    home = tmp_path / 'a%h$HOME"q'
    text = svc.systemd_unit(_spec(home))
    assert "%h" not in text.replace("%%h", "")
    assert svc.installed_home_text(text) == str(home)
    with pytest.raises(svc.ServiceError):
        svc.systemd_unit(_spec(tmp_path / "bad\nline"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    d = tmp_path / "units"
    d.mkdir()
    home = tmp_path / "my home%"
    home.mkdir()
    spec = svc.ServiceSpec(Home(home), shutil.which("python3") or "/usr/bin/python3", "systemd",
                           svc.systemd_version())  # fmt: skip
    unit = d / svc.UNIT_NAME
    unit.write_text(svc.systemd_unit(spec))
    p = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)})  # fmt: skip
    problems = [
        ln for ln in (p.stdout + p.stderr).splitlines()
        if svc.UNIT_NAME in ln
    ]  # fmt: skip
    assert p.returncode == 0 and not problems, p.stdout + p.stderr
    # the check can fail: a bad value is reported
    unit.write_text(svc.systemd_unit(spec).replace("Restart=always", "Restart=sometimes"))
    p = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)})  # fmt: skip
    assert "sometimes" in p.stdout + p.stderr


def test_launchd_plist_parses_and_names_home(tmp_path: Path) -> None:
    spec = svc.ServiceSpec(Home(tmp_path / "h"), "/opt/py/bin/python", "launchd")
    doc = plistlib.loads(svc.launchd_plist(spec))
    assert doc["Label"] == svc.LAUNCHD_LABEL
    assert doc["EnvironmentVariables"]["CARAPACE_HOME"] == str(tmp_path / "h")
    assert doc["EnvironmentVariables"]["CARAPACE_ENV_FILE"] == str(tmp_path / "h/carapace.env")
    assert doc["KeepAlive"] is True and doc["ThrottleInterval"] == 10 and doc["RunAtLoad"]
    assert doc["ProgramArguments"][0] == "/bin/sh" and doc["ProgramArguments"][3] == spec.python
    # the script runs: sources the env file, execs python -m carapace run --home
    fake = tmp_path / "fakepy"
    fake.write_text('#!/bin/sh\necho "$FOO" "$@"\n')
    fake.chmod(0o755)
    (tmp_path / "h").mkdir()
    (tmp_path / "h/carapace.env").write_text("FOO=bar\n")
    args = doc["ProgramArguments"]
    out = subprocess.run([args[0], args[1], args[2], str(fake)], capture_output=True, text=True,
                         env={**doc["EnvironmentVariables"], "PATH": os.environ["PATH"]},
                         timeout=30)  # fmt: skip
    assert out.stdout.split() == ["bar", "-m", "carapace", "run", "--home", str(tmp_path / "h")]


def test_install_status_doctor_uninstall_in_a_unit_dir(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    units = tmp_path / "units"
    monkeypatch.setenv("CARAPACE_UNIT_DIR", str(units))
    home = tmp_path / "home"
    runner = CliRunner()
    r = runner.invoke(main, ["service", "install", "--no-enable", "--kind", "systemd", "--home",
                             str(home)])  # fmt: skip
    assert r.exit_code == 0, r.output
    unit = units / svc.UNIT_NAME
    assert svc.installed_home(unit, "systemd") == str(home)
    assert svc.check(Home(home), "systemd") == []
    # another home: install refuses to take the unit over, doctor says it is not this home
    r = runner.invoke(main, ["service", "install", "--no-enable", "--kind", "systemd", "--home",
                             str(tmp_path / "other")])  # fmt: skip
    assert r.exit_code != 0 and "already runs the home" in r.output
    [problem] = svc.check(Home(tmp_path / "other"), "systemd")
    assert "not this one" in problem
    unit.write_text(unit.read_text().replace("Restart=always", "Restart=no"))
    [problem] = svc.check(Home(home), "systemd")
    assert "differs" in problem
    r = runner.invoke(main, ["service", "status", "--json", "--kind", "systemd", "--home",
                             str(home)])  # fmt: skip
    assert r.exit_code == 0 and '"matches_home": true' in r.output
    r = runner.invoke(main, ["service", "uninstall", "--no-disable", "--kind", "systemd"])
    assert r.exit_code == 0 and not unit.exists()


def test_linger_advice(tmp_path: Path) -> None:
    assert not svc.lingering("alice", tmp_path)
    (tmp_path / "alice").write_text("")
    assert svc.lingering("alice", tmp_path)


def test_doctor_reports_unit_for_another_home_and_sizes(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from carapace.bootstrap import init_home
    from carapace.migrate.doctor import diagnose

    monkeypatch.setenv("CARAPACE_UNIT_DIR", str(tmp_path / "units"))
    home = Home(tmp_path / "home")
    init_home(home)
    rep = diagnose(home)
    assert not [f for f in rep.findings if f.code == "service-unit"]
    assert any(f.code == "sizes" and "central db" in f.message for f in rep.findings)
    svc.install(svc.spec_for(Home(tmp_path / "elsewhere")), tmp_path / "units", enable=False)
    [f] = [f for f in diagnose(home).findings if f.code == "service-unit"]
    assert "elsewhere" in f.message
    env = home.root / "carapace.env"
    env.write_text("ANTHROPIC_API_KEY=x\n")
    env.chmod(0o644)
    assert [f.code for f in diagnose(home).findings if f.code == "env-file-readable"]
    env.chmod(0o600)
    assert not [f.code for f in diagnose(home).findings if f.code == "env-file-readable"]


def test_unwritable_unit_dir_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "units").write_text("a file, not a directory")
    r = CliRunner().invoke(main, ["service", "install", "--no-enable", "--kind", "systemd",
                                  "--unit-dir", str(tmp_path / "units" / "x"),
                                  "--home", str(tmp_path / "h")])  # fmt: skip
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "[io]" in r.output
