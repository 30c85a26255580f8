"""The carapace home: where everything lives, and the host's settings.

A home is NanoClaw-shaped so a NanoClaw v2 folder opens in place::

    <home>/carapace.toml          host settings (optional)
    <home>/data/v2.db             central DB
    <home>/data/v2-sessions/      session folders
    <home>/data/ncl.sock          admin socket, mode 0600
    <home>/data/cli.sock          local CLI chat channel socket, mode 0600
    <home>/groups/<folder>/       agent group folders

The home is ``--home``, else ``$CARAPACE_HOME``, else the user data directory
(``$XDG_DATA_HOME/carapace`` or ``~/.local/share/carapace``).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carapace.errors import ConfigError


def default_home() -> Path:
    env = os.environ.get("CARAPACE_HOME")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "carapace"


def check_home_path(root: Path) -> None:
    """``ConfigError`` unless ``root`` is a usable folder or does not exist yet."""
    try:
        st = root.stat()
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise ConfigError(f"cannot use {root} as the home: a part of that path is not a directory")
    except OSError as exc:
        raise ConfigError(f"cannot use {root} as the home: {exc.strerror or exc}")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cannot use {root} as the home: it is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ConfigError(f"cannot use {root} as the home: permission denied (not readable)")


# memory set aside per runner: an idle one with the anthropic SDK is ~88 MiB RSS (~80 PSS),
# with openai's ~59 (~51), with the mock provider ~18 (~13); a turn needs room besides
# (`carapace bench runner`). 64 until 2026-12-06, sized on the mock runner: on a 4 GiB
# machine 32 anthropic runners took ~2.6 GiB.
RUNNER_BUDGET_MIB = 128
RUNNER_CAP_MIN, RUNNER_CAP_MAX = 4, 128


def default_max_runners(mem_total_kib: int | None = None) -> int:
    """The default runner cap (issue 19): half the machine's memory divided by
    ``RUNNER_BUDGET_MIB`` per runner, clamped to [4, 128]; 8 when the memory is unknown.
    E.g. 4 GiB -> 16, 8 GiB -> 32, 16 GiB -> 64, 32 GiB and more -> 128. ``max_runners`` in
    carapace.toml overrides it. Not lowered to follow the CPU count: an idle runner costs
    no CPU, and a cap below the number of busy chats makes idle runners yield and restart
    in turn (measured: 100 chats × 10 messages on 2 CPUs took 112-116 s with a cap of 16
    or 32, every message a runner start, against 17-19 s with 128)."""
    if mem_total_kib is None:
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemTotal:"):
                        mem_total_kib = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            pass
    if not mem_total_kib:
        return 8
    cap = (mem_total_kib // 2) // (RUNNER_BUDGET_MIB * 1024)
    return max(RUNNER_CAP_MIN, min(RUNNER_CAP_MAX, cap))


@dataclass(frozen=True)
class Settings:
    """Host settings from ``carapace.toml`` (every key optional)."""

    timezone: str = "UTC"
    max_runners: int = field(default_factory=default_max_runners)  # memory-based default
    runner_backend: str = "auto"  # auto | bwrap | subprocess (docs/sandbox.md)
    bwrap: str = "bwrap"  # the bubblewrap executable
    runner_idle_exit_s: float = 300.0
    runner_spare: bool = True  # one pre-started process for the next runner (sandbox/spare.py)
    default_provider: str | None = None
    max_tries: int = 5
    approval_ttl_s: float = 7 * 24 * 3600.0
    deny_ttl_s: float = 24 * 3600.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        """The home named by ``--home`` (else the default); ``ConfigError`` when that path
        cannot be a home: a NUL in it, an existing non-folder, or a folder we cannot enter."""
        if home is not None and "\0" in os.fspath(home):
            raise ConfigError("the home path contains a NUL character")
        try:
            root = Path(home).expanduser().absolute() if home else default_home()
        except (RuntimeError, ValueError, OSError) as exc:  # ~unknown-user, bad $HOME
            raise ConfigError(f"cannot resolve the home {home!r}: {exc}")
        check_home_path(root)
        return cls(root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def central_db(self) -> Path:
        return self.data_dir / "v2.db"

    @property
    def ingest_journal(self) -> Path:
        """Routed messages acknowledged, not yet in their sessions' files (host/ingest.py)."""
        return self.data_dir / "ingest.db"

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "v2-sessions"

    @property
    def groups_dir(self) -> Path:
        return self.root / "groups"

    @property
    def admin_socket(self) -> Path:
        """The admin socket (NanoClaw's name), mode 0600."""
        return self.data_dir / "ncl.sock"

    @property
    def cli_socket(self) -> Path:
        """The local CLI chat channel's socket (NanoClaw's name), mode 0600."""
        return self.data_dir / "cli.sock"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "host.pid"

    @property
    def config_file(self) -> Path:
        return self.root / "carapace.toml"

    def group_dir(self, folder: str) -> Path:
        return self.groups_dir / folder

    def load_settings(self) -> Settings:
        if not self.config_file.exists():
            return Settings()
        try:
            raw = tomllib.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {self.config_file}: {exc}")
        known = {f for f in Settings.__dataclass_fields__ if f != "extra"}
        kwargs = {k.replace("-", "_"): v for k, v in raw.items()}
        extra = {k: v for k, v in kwargs.items() if k not in known}
        for key, value in kwargs.items():
            if key in known:
                _check_setting(self.config_file, key, value)
        try:
            return Settings(**{k: v for k, v in kwargs.items() if k in known}, extra=extra)
        except TypeError as exc:
            raise ConfigError(f"bad setting in {self.config_file}: {exc}")


_INT_KEYS = {"max_runners": 1, "max_tries": 1}
_SECONDS_KEYS = {"runner_idle_exit_s", "approval_ttl_s", "deny_ttl_s"}
_STR_KEYS = {"timezone", "runner_backend", "bwrap", "default_provider"}
RUNNER_BACKENDS = ("auto", "bwrap", "subprocess")  # sandbox.bwrap.BACKENDS and "auto"


def _check_setting(path: Path, key: str, value: Any) -> None:
    """One clear line naming the key when a known setting has the wrong type or range."""
    where = f"{path}: {key}"
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        if not _INT_KEYS[key] <= value <= 1_000_000:
            raise ConfigError(f"{where} must be between {_INT_KEYS[key]} and 1000000, not {value}")
    elif key in _SECONDS_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number of seconds, not {value!r}")
        if not 0 <= value <= 10 * 365 * 24 * 3600:
            raise ConfigError(f"{where} must be between 0 and 10 years in seconds, not {value}")
    elif key == "runner_spare" and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    elif key in _STR_KEYS and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    elif key == "runner_backend" and value.strip().lower() not in RUNNER_BACKENDS:
        known = ", ".join(RUNNER_BACKENDS)
        raise ConfigError(f"{where}: unknown runner backend {value[:64]!r} (known: {known})")
    elif key == "timezone":
        try:
            ZoneInfo(value)
        except (ValueError, OSError, ZoneInfoNotFoundError):
            raise ConfigError(f"{where} is not a known time zone: {value[:64]!r}")
