"""``carapace service``: run the host as a systemd user unit (Linux) or launchd agent (macOS).

The unit names the home (``CARAPACE_HOME``) and an environment file
(``<home>/carapace.env``, optional: provider keys and the like, ``KEY=value`` lines), restarts
the host whenever it exits other than by ``systemctl stop`` (systemd: ``Restart=always``,
growing delays from 5 s to 5 min on systemd >= 254, a steady 10 s before that, never giving
up; launchd: ``KeepAlive`` with a 10 s throttle). The unit directory is
``$CARAPACE_UNIT_DIR`` when set (tests), else systemd's / launchd's per-user directory.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from carapace.config import Home
from carapace.errors import ConfigError

UNIT_NAME = "carapace.service"
LAUNCHD_LABEL = "io.carapace.host"


class ServiceError(ConfigError):
    code = "service"


@dataclass(frozen=True)
class ServiceSpec:
    home: Home
    python: str
    kind: str  # "systemd" | "launchd"
    systemd_version: int = 0

    @property
    def env_file(self) -> Path:
        return self.home.root / "carapace.env"

    @property
    def file_name(self) -> str:
        return UNIT_NAME if self.kind == "systemd" else f"{LAUNCHD_LABEL}.plist"


def platform_kind() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def unit_dir(kind: str, override: str | None = None) -> Path:
    chosen = override or os.environ.get("CARAPACE_UNIT_DIR")
    if chosen:
        return Path(chosen).expanduser().absolute()
    if kind == "launchd":
        return Path.home() / "Library" / "LaunchAgents"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "systemd" / "user"


def systemd_version() -> int:
    exe = shutil.which("systemctl")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.match(r"systemd (\d+)", out.stdout)
    return int(m.group(1)) if m else 0


def _q(value: str) -> str:
    """A systemd-quoted word: specifiers and variables escaped, always double-quoted."""
    if "\n" in value or "\0" in value:
        raise ServiceError("a path in the unit contains a newline or NUL")
    v = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{v}"'


def _path(value: str) -> str:
    """A bare path setting (no quoting there): specifiers escaped."""
    if "\n" in value or "\0" in value:
        raise ServiceError("a path in the unit contains a newline or NUL")
    return value.replace("%", "%%")


def systemd_unit(spec: ServiceSpec) -> str:
    home = str(spec.home.root)
    backoff = (
        ["RestartSec=5s", "RestartSteps=6", "RestartMaxDelaySec=5min"]
        if spec.systemd_version >= 254
        else ["RestartSec=10s"]
    )
    lines = [
        "# Written by `carapace service install`; `carapace doctor` checks it.",
        "[Unit]",
        f"Description=carapace host ({home.replace('%', '%%')})",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"Environment={_q('CARAPACE_HOME=' + home)}",
        'Environment="CARAPACE_SERVICE=systemd"',
        f"EnvironmentFile=-{_path(str(spec.env_file))}",
        f"ExecStart={_q(spec.python)} -m carapace run --home {_q(home)}",
        "Restart=always",
        *backoff,
        "KillMode=mixed",
        "TimeoutStopSec=60",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


_LAUNCHD_SCRIPT = (
    'if [ -f "$CARAPACE_ENV_FILE" ]; then set -a; . "$CARAPACE_ENV_FILE"; set +a; fi; '
    'exec "$0" -m carapace run --home "$CARAPACE_HOME"'
)


def launchd_plist(spec: ServiceSpec) -> bytes:
    home = str(spec.home.root)
    logs = spec.home.root / "logs"
    doc = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": ["/bin/sh", "-c", _LAUNCHD_SCRIPT, spec.python],
        "EnvironmentVariables": {
            "CARAPACE_HOME": home,
            "CARAPACE_ENV_FILE": str(spec.env_file),
            "CARAPACE_SERVICE": "launchd",
        },
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ProcessType": "Background",
        "StandardOutPath": str(logs / "service.out.log"),
        "StandardErrorPath": str(logs / "service.err.log"),
    }
    return plistlib.dumps(doc)


def render(spec: ServiceSpec) -> bytes:
    return systemd_unit(spec).encode() if spec.kind == "systemd" else launchd_plist(spec)


def spec_for(home: Home, kind: str | None = None) -> ServiceSpec:
    k = kind or platform_kind()
    return ServiceSpec(home, sys.executable, k, systemd_version() if k == "systemd" else 0)


def installed_home(path: Path, kind: str) -> str | None:
    """The home an installed unit names (None when it names none)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if kind == "launchd":
        try:
            doc = plistlib.loads(data)
        except Exception:
            return None
        env = doc.get("EnvironmentVariables") if isinstance(doc, dict) else None
        return str(env.get("CARAPACE_HOME")) if isinstance(env, dict) else None
    return installed_home_text(data.decode("utf-8", "replace"))


def installed_home_text(text: str) -> str | None:
    m = re.search(r'^Environment="CARAPACE_HOME=(.*)"$', text, re.M)
    if m is None:
        return None
    return re.sub(r"\$\$|%%|\\(.)", lambda x: x.group(1) or x.group(0)[0], m.group(1))


@dataclass
class ServiceResult:
    path: Path
    lines: list[str]


def _run(cmd: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)
    return p.returncode, (p.stdout + p.stderr).strip()


def lingering(user: str | None = None, linger_dir: Path = Path("/var/lib/systemd/linger")) -> bool:
    name = user or os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    return bool(name) and (linger_dir / name).exists()


def install(spec: ServiceSpec, directory: Path, *, enable: bool = True) -> ServiceResult:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / spec.file_name
    other = installed_home(path, spec.kind) if path.exists() else None
    if other is not None and other != str(spec.home.root):
        raise ServiceError(
            f"{path} already runs the home {other}; uninstall it first (carapace service "
            f"uninstall --home {other})"
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(render(spec))
    os.replace(tmp, path)
    out = ServiceResult(path, [f"wrote {path}"])
    if not enable:
        return out
    if spec.kind == "systemd":
        ctl = shutil.which("systemctl")
        if ctl is None:
            out.lines.append("systemctl not found: enable it with "
                             f"`systemctl --user enable --now {UNIT_NAME}`")  # fmt: skip
        else:
            for cmd in (["daemon-reload"], ["enable", "--now", UNIT_NAME]):
                rc, text = _run([ctl, "--user", *cmd])
                out.lines.append(
                    f"systemctl --user {' '.join(cmd)}: " + ("ok" if rc == 0 else text)
                )
        if not lingering():
            user = os.environ.get("USER", "$USER")
            out.lines.append(f"lingering is off: the host stops when you log out; run "
                             f"`loginctl enable-linger {user}` to keep it running")  # fmt: skip
    else:
        rc, text = _run(["launchctl", "load", "-w", str(path)])
        out.lines.append("launchctl load: " + ("ok" if rc == 0 else text))
    return out


def uninstall(kind: str, directory: Path, *, disable: bool = True) -> ServiceResult:
    path = directory / (UNIT_NAME if kind == "systemd" else f"{LAUNCHD_LABEL}.plist")
    out = ServiceResult(path, [])
    if not path.exists():
        out.lines.append(f"no service installed at {path}")
        return out
    if disable and kind == "systemd" and shutil.which("systemctl"):
        rc, text = _run(["systemctl", "--user", "disable", "--now", UNIT_NAME])
        out.lines.append("systemctl --user disable --now: " + ("ok" if rc == 0 else text))
    elif disable and kind == "launchd":
        rc, text = _run(["launchctl", "unload", "-w", str(path)])
        out.lines.append("launchctl unload: " + ("ok" if rc == 0 else text))
    path.unlink()
    out.lines.append(f"removed {path}")
    if disable and kind == "systemd" and shutil.which("systemctl"):
        _run(["systemctl", "--user", "daemon-reload"])
    return out


def status(home: Home, kind: str, directory: Path) -> dict[str, object]:
    path = directory / (UNIT_NAME if kind == "systemd" else f"{LAUNCHD_LABEL}.plist")
    info: dict[str, object] = {"kind": kind, "unit": str(path), "installed": path.exists()}
    if path.exists():
        named = installed_home(path, kind)
        info["unit_home"] = named
        info["matches_home"] = named == str(home.root)
    if kind == "systemd" and path.exists() and shutil.which("systemctl"):
        rc, text = _run(["systemctl", "--user", "is-active", UNIT_NAME])
        info["active"] = text.splitlines()[-1] if text else ("active" if rc == 0 else "unknown")
    if kind == "systemd":
        info["lingering"] = lingering()
    return info


def check(home: Home, kind: str | None = None, directory: Path | None = None) -> list[str]:
    """Doctor: problems with an installed unit for this home (empty when none or fine)."""
    k = kind or platform_kind()
    d = directory or unit_dir(k)
    path = d / (UNIT_NAME if k == "systemd" else f"{LAUNCHD_LABEL}.plist")
    if not path.exists():
        return []
    named = installed_home(path, k)
    if named is None:
        return [f"{path} names no CARAPACE_HOME; reinstall with `carapace service install`"]
    if named != str(home.root):
        return [f"{path} runs the home {named}, not this one"]
    want = render(spec_for(home, k))
    if path.read_bytes() != want:
        return [f"{path} differs from what `carapace service install` writes now "
                "(moved python or edited by hand); reinstall it"]  # fmt: skip
    return []
