"""``<home>/secrets.env``: the secrets the host holds (provider keys, channel tokens).

The file holds ``NAME=value`` lines (``#`` comments, blank lines and an optional ``export``
prefix allowed; values may be quoted). It must be a regular file owned by the user running
the host with no group or other permission bits (``chmod 600``); anything wider is refused
with a ``ConfigError`` naming the file and its mode. It is opened without following links.
``write_secret`` changes it atomically and keeps it 0600. Its values never go into the DB,
a runner's environment, logs or the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from carapace.errors import ConfigError

SECRETS_FILE = "secrets.env"


def read_secrets_file(path: Path) -> dict[str, str]:
    """The variables of a secrets file ({} when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot open secrets file {path}: {exc.strerror or exc}")
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"secrets file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"secrets file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"it must be readable by its owner only (chmod 600 {path})"
            )
        if st.st_uid != os.geteuid():
            raise ConfigError(f"secrets file {path} is not owned by the user running carapace")
        text = fh.read()
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise ConfigError(f"secrets file {path} line {number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def write_secret(path: Path, updates: Mapping[str, str | None]) -> None:
    """Set (or, with None, remove) variables in a secrets file: mode 0600, replaced
    atomically (a temporary file in the same folder, fsynced, renamed over it). Other lines,
    comments included, are kept as they were. A value holding a newline is refused."""
    for name, value in updates.items():
        if not name or not name.replace("_", "").isalnum():
            raise ConfigError(f"bad secret name {name!r}")
        if value is not None and ("\n" in value or "\r" in value or "\0" in value):
            raise ConfigError(f"the value of {name} holds a line break")
    read_secrets_file(path)  # refuses a linked, foreign or world-readable file first
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    pending = dict(updates)
    out: list[str] = []
    for raw in lines:
        name = raw.strip().removeprefix("export ").partition("=")[0].strip()
        if name in pending:
            value = pending.pop(name)
            if value is not None:
                out.append(f"{name}={value}")
            continue
        out.append(raw)
    out.extend(f"{n}={v}" for n, v in pending.items() if v is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write("".join(line + "\n" for line in out))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write secrets file {path}: {exc.strerror or exc}")
