"""Per-group packages that really install (docs/sandbox.md, "Packages").

Each agent group has a host-owned prefix ``<home>/data/packages/<agent group id>/``:
``venv/`` (a Python virtualenv for pip packages) and ``npm/`` (an npm ``--global --prefix``).
The bwrap backend binds it read-only, at the same path, into that group's sandbox only,
with ``venv/bin`` and ``npm/bin`` first on ``PATH`` and ``NODE_PATH`` set (``sandbox_env``).

``install`` runs pip and npm inside their own bubblewrap sandbox (they execute package
code): no host files but the system, the interpreter and the group's prefix (read-write);
no network but the host's registries-only ``CONNECT`` proxy (``egress.py``). Each package
is installed on its own so the report says exactly what installed and what failed; the
whole transcript goes to ``<home>/data/packages/<agent group id>.log``.

apt packages are refused with a reason: carapace does not build a per-group Debian prefix
(unpacking ``.deb`` files without their maintainer scripts is not implemented).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import carapace
from carapace.config import Home
from carapace.errors import ValidationError
from carapace.packagenames import valid_package
from carapace.sandbox.packages import group_dir, sandbox_env
from carapace.timefmt import iso, utcnow

logger = logging.getLogger(__name__)
__all__ = ["Report", "check_names", "group_dir", "install", "log_path", "remove", "sandbox_env"]

SANDBOX_SOCKET = "/run/carapace/registry.sock"
INSTALL_TIMEOUT_S = 1800
APT_REFUSAL = ("not installed: carapace does not install apt packages per group (a Debian "
               "prefix without maintainer scripts is not implemented); ask the operator to "
               "install it on the host")  # fmt: skip


@dataclass
class Report:
    installed: list[str] = field(default_factory=list)  # "pip:name", "npm:name"
    failed: list[tuple[str, str]] = field(default_factory=list)  # (kind:name, why)

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        parts = []
        if self.installed:
            parts.append("Installed: " + ", ".join(self.installed) + ".")
        if self.failed:
            parts.append("Not installed: " + "; ".join(f"{n} ({why})" for n, why in self.failed)
                         + ".")  # fmt: skip
        return " ".join(parts) or "Nothing to install."


def log_path(home: Home, agent_group_id: str) -> Path:
    return group_dir(home, agent_group_id).with_suffix(".log")


def check_names(pip: list[str], npm: list[str], apt: list[str]) -> None:
    for kind, names in (("pip", pip), ("npm", npm), ("apt", apt)):
        for name in names:
            if not valid_package(kind, name):
                raise ValidationError(f'invalid {kind} package name "{name}" (a bare name: '
                                      "no version, URL, path or option)")  # fmt: skip


def install(
    home: Home,
    agent_group_id: str,
    *,
    pip: list[str] = (),  # type: ignore[assignment]
    npm: list[str] = (),  # type: ignore[assignment]
    apt: list[str] = (),  # type: ignore[assignment]
    bwrap: str = "bwrap",
) -> Report:
    """Install into the group's prefix (blocking: call it off the event loop)."""
    check_names(list(pip), list(npm), list(apt))
    report = Report()
    for name in apt:
        report.failed.append((f"apt:{name}", APT_REFUSAL))
    if not pip and not npm:
        return report
    prefix = group_dir(home, agent_group_id)
    prefix.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = log_path(home, agent_group_id)
    exe = shutil.which(bwrap)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"--- {iso(utcnow())} install pip={list(pip)} npm={list(npm)}\n")
        fh.flush()
        if exe is None:
            why = "bubblewrap is not available to sandbox the installation"
            report.failed += [
                (f"{k}:{n}", why) for k, ns in (("pip", pip), ("npm", npm)) for n in ns
            ]
            fh.write(why + "\n")
            return report
        _run_sandboxed(exe, prefix, list(pip), list(npm), fh, report)
        fh.write(f"--- result: {report.text()}\n")
    logger.info("packages for %s: %s", agent_group_id, report.text())
    return report


def _run_sandboxed(exe: str, prefix: Path, pip: list[str], npm: list[str], fh: object,
                   report: Report, *, remove: bool = False) -> None:  # fmt: skip
    from carapace.packages.egress import RegistryProxy
    from carapace.sandbox.bwrap import _system_args, python_paths

    tmp = Path(tempfile.mkdtemp(prefix="carapace-reg-"))
    sock = tmp / "r.sock"
    log_file = fh  # a text file opened by the caller

    def note(line: str) -> None:
        log_file.write(f"[egress] {line}\n")  # type: ignore[attr-defined]
        log_file.flush()  # type: ignore[attr-defined]

    proxy = RegistryProxy(sock, note)
    try:
        argv = [exe, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *_system_args(False)]  # fmt: skip
        for path in python_paths(sys.executable):
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--bind", str(prefix), str(prefix), "--bind", str(sock), SANDBOX_SOCKET]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
        pkg_root = Path(carapace.__file__).parent.parent
        env["PYTHONPATH"] = str(pkg_root)
        argv.append("--clearenv")
        for k, v in sorted(env.items()):
            argv += ["--setenv", k, v]
        argv += ["--chdir", "/tmp", "--", sys.executable, "-m", "carapace.packages.sandboxed"]
        base_python = getattr(sys, "_base_executable", sys.executable)
        plan = {"dir": str(prefix), "python": base_python, "socket": SANDBOX_SOCKET,
                "pip": pip, "npm": npm, "remove": remove}  # fmt: skip
        try:
            proc = subprocess.run(argv, input=json.dumps(plan), capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT_S)  # fmt: skip
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired:
            out, err, code = "", "installation timed out", -1
        log_file.write(err)  # type: ignore[attr-defined]
        seen: set[str] = set()
        for line in out.splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            key = f"{r.get('kind')}:{r.get('name')}"
            seen.add(key)
            if r.get("ok"):
                report.installed.append(key)
            else:
                report.failed.append((key, str(r.get("detail") or "failed")))
        for key in [f"pip:{n}" for n in pip] + [f"npm:{n}" for n in npm]:
            if key not in seen:
                report.failed.append((key, f"the install sandbox failed (exit {code})"))
    finally:
        proxy.close()
        shutil.rmtree(tmp, ignore_errors=True)


def remove(home: Home, agent_group_id: str, *, pip: list[str] = (), npm: list[str] = (),  # type: ignore[assignment]
           bwrap: str = "bwrap") -> Report:  # fmt: skip
    """Uninstall from the group's prefix, in the same sandbox (the prefix's files were
    written by package code: they are never acted on outside a sandbox)."""
    check_names(list(pip), list(npm), [])
    report = Report()
    prefix = group_dir(home, agent_group_id)
    exe = shutil.which(bwrap)
    if not prefix.is_dir() or exe is None or (not pip and not npm):
        report.failed += [(f"{k}:{n}", "not installed") for k, ns in (("pip", pip), ("npm", npm))
                          for n in ns]  # fmt: skip
        return report
    with log_path(home, agent_group_id).open("a", encoding="utf-8") as fh:
        fh.write(f"--- {iso(utcnow())} remove pip={list(pip)} npm={list(npm)}\n")
        _run_sandboxed(exe, prefix, list(pip), list(npm), fh, report, remove=True)
        fh.write(f"--- result: {report.text()}\n")
    report.installed = [f"removed {k}" for k in report.installed]
    return report
