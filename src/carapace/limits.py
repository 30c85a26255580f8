"""Per-runner resource limits (docs/sandbox.md "Limits"), configurable per agent group.

``container_configs.settings.limits`` (all optional; bad values are logged and defaulted)::

    {"memory_mb": 2048, "processes": 512, "cpu_s": 600, "file_size_mb": 1024,
     "tmp_mb": 256, "tool_timeout_s": 600}

How they apply:

* the host starts each runner with ``setrlimit`` (``preexec``): address space
  (``memory_mb``, per process) and file size (``file_size_mb``); under ``systemd-run --user --scope``
  when that works here, ``MemoryMax``/``TasksMax`` bound the runner's whole tree instead;
  else, where the host can make cgroup v1 ``pids`` cgroups (root in a container), each
  runner's tree is bounded by its own ``pids.max`` (``mechanism`` says which applies; the
  host's start-up line names it);
* processes (``processes``): the runner sets ``RLIMIT_NPROC`` on itself, and only inside
  a user namespace of its own (bwrap's), where Linux counts the tasks of that namespace:
  the limit then bounds the sandbox. Set before the sandbox is made (as it was until
  2026-12-06), it bounded every task of the user instead, threads included, and a
  desktop session's are often more than 512: no sandbox could even be made ("Creating new
  namespace failed: Resource temporarily unavailable"). Outside a namespace of its own
  (the ``subprocess`` backend) it is not set; root is not bounded by it at all;
* the bwrap sandbox's ``/tmp`` is a tmpfs of ``tmp_mb``;
* the runner applies them again to every command it starts (bash, pre-task scripts), with
  ``cpu_s`` of CPU time each, and caps every command's wall clock at ``tool_timeout_s``
  (the host's stuck check uses the same cap).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from carapace.log import get_logger
from carapace.record import fields, record

logger = get_logger(__name__)

MB = 1024 * 1024
MAX_TOOL_TIMEOUT_S = 3600.0  # no group can declare more: the stuck check trusts no larger value


@record(frozen=True)
class Limits:
    memory_mb: int = 2048
    processes: int = 512
    cpu_s: int = 600
    file_size_mb: int = 1024
    tmp_mb: int = 256
    tool_timeout_s: float = 600.0


def parse_limits(settings: Mapping[str, object] | None) -> tuple[Limits, list[str]]:
    """``settings["limits"]`` → ``Limits`` and the errors of bad values (defaulted)."""
    raw = (settings or {}).get("limits")
    if raw is None:
        return Limits(), []
    if not isinstance(raw, dict):
        return Limits(), [f"limits must be an object, not {raw!r}"]
    values: dict[str, object] = {}
    errors: list[str] = []
    known = set(fields(Limits))
    for key, value in raw.items():
        if key not in known:
            errors.append(f"unknown limit {key!r}")
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not ok:
            errors.append(f"limits.{key} must be a positive number, not {value!r}")
            continue
        assert isinstance(value, int | float)
        if key == "tool_timeout_s":
            values[key] = min(float(value), MAX_TOOL_TIMEOUT_S)
        else:
            values[key] = max(1, int(value))
    return Limits(**values), errors  # type: ignore[arg-type]


def limits_of(settings: Mapping[str, object] | None) -> Limits:
    limits, errors = parse_limits(settings)
    for error in errors:
        logger.warning("settings: %s; using the default", error)
    return limits


def _set(which: int, value: int) -> None:
    try:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass


def rlimit_values(limits: Limits, *, cpu: bool = False) -> list[tuple[int, int]]:
    """``(resource, value)`` pairs of the limits (``cpu``: also CPU seconds). Never
    ``RLIMIT_NPROC``: see :func:`limit_own_processes`."""
    values = [(resource.RLIMIT_AS, limits.memory_mb * MB),
              (resource.RLIMIT_FSIZE, limits.file_size_mb * MB)]  # fmt: skip
    if cpu:
        values.append((resource.RLIMIT_CPU, limits.cpu_s))
    return values


IDENTITY_MAP = ["0", "0", "4294967295"]  # /proc/self/uid_map of the initial user namespace


def in_own_user_namespace(uid_map: str = "/proc/self/uid_map") -> bool:
    """Whether this process runs in a user namespace other than the initial one."""
    try:
        with open(uid_map) as fh:
            return fh.read().split() != IDENTITY_MAP
    except OSError:
        return False


def limit_own_processes(limits: Limits, *, uid_map: str = "/proc/self/uid_map") -> bool:
    """``RLIMIT_NPROC`` = ``limits.processes`` on this process (its children inherit it),
    only inside a user namespace of its own: there Linux counts the namespace's tasks. In
    the initial one it would count every task of the user (a desktop's threads too), so
    the limit is left to the cgroups there. True when set."""
    if not in_own_user_namespace(uid_map):
        return False
    _set(resource.RLIMIT_NPROC, limits.processes)
    return True


def rlimit_preexec(limits: Limits, *, cpu: bool = False) -> Callable[[], None]:
    """A ``preexec_fn`` setting the limits in the child (``cpu``: also CPU seconds)."""
    values = rlimit_values(limits, cpu=cpu)

    def apply() -> None:  # pragma: no cover - runs in the child
        for which, value in values:
            _set(which, value)

    return apply


@functools.cache
def systemd_scope_usable() -> bool:
    """Whether ``systemd-run --user --scope`` can start a process here (probed once)."""
    import shutil  # here: the runner imports this module, and never needs these
    import subprocess

    exe = shutil.which("systemd-run")
    if exe is None:
        return False
    try:
        res = subprocess.run([exe, "--user", "--scope", "--quiet", "true"],
                             capture_output=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def scope_argv(limits: Limits) -> list[str]:
    """The ``systemd-run`` prefix that puts a runner in its own bounded cgroup."""
    return ["systemd-run", "--user", "--scope", "--quiet", "--collect",
            "-p", f"MemoryMax={limits.memory_mb}M", "-p", f"TasksMax={limits.processes}",
            "--"]  # fmt: skip


PIDS_V1 = Path("/sys/fs/cgroup/pids")


@functools.cache
def pids_cgroup_root() -> Path | None:
    """Without systemd: a cgroup v1 ``pids`` folder where this process can make one cgroup
    per runner (typically when the host runs as root in a container), else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _n, _sep, rest = line.partition(":")
        controllers, _sep, path = rest.partition(":")
        if "pids" not in controllers.split(","):
            continue
        base = PIDS_V1 / path.lstrip("/")
        probe = base / f"carapace-probe-{os.getpid()}"
        try:
            probe.mkdir()
            (probe / "pids.max").write_text("8\n")
            probe.rmdir()
        except OSError:
            with contextlib.suppress(OSError):
                probe.rmdir()
            return None
        return base
    return None


def runner_cgroup(name: str, limits: Limits) -> Path | None:
    """A ``pids`` cgroup bounding one runner's tree to ``limits.processes`` tasks (None
    when systemd scopes are used instead or no cgroup can be made here)."""
    if systemd_scope_usable():
        return None
    base = pids_cgroup_root()
    if base is None:
        return None
    # the host's pid in the name: two hosts on one machine (two homes, a copy of one) may
    # hold the same session id, and removing a cgroup kills what is left in it
    path = base / f"carapace-{os.getpid()}-{name}"
    try:
        path.mkdir(exist_ok=True)
        (path / "pids.max").write_text(f"{limits.processes}\n")
    except OSError as exc:
        logger.warning("cannot make the pids cgroup %s: %s", path, exc)
        return None
    return path


_OWNED = re.compile(r"carapace-(?:spare-)?(\d+)-")  # and the spares' names before pids came first


def sweep_cgroups() -> int:
    """Remove the empty runner cgroups of hosts that are gone (a host killed, or one whose
    spare outlived it, leaves its cgroups behind): those whose name holds the pid of a
    process that no longer exists. Returns how many were removed; a live host's are never
    touched, and a cgroup with tasks in it cannot be removed."""
    base = pids_cgroup_root()
    if base is None:
        return 0
    removed = 0
    for name in left_by_gone_hosts(base, _OWNED):
        with contextlib.suppress(OSError):
            (base / name).rmdir()
            removed += 1
    return removed


def left_by_gone_hosts(base: str | Path, pattern: re.Pattern[str]) -> list[str]:
    """The names in the folder ``base`` that ``pattern`` matches with, as its group 1, the
    pid of a process that no longer exists (none when ``base`` cannot be listed)."""
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return [name for name in names
            if (m := pattern.match(name)) is not None and not pid_alive(int(m.group(1)))]  # fmt: skip


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (this process's own pid included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def join_cgroup(path: Path | None) -> None:  # pragma: no cover - runs in the child
    if path is not None:
        with contextlib.suppress(OSError), open(path / "cgroup.procs", "w") as fh:
            fh.write("0\n")


def remove_cgroup(path: Path | None, wait_s: float = 2.0) -> None:
    """Remove a runner's cgroup once its tree is gone: what is left is killed first, and
    the removal waits (up to ``wait_s``, polling) for those tasks to leave it, since a
    cgroup with tasks cannot be removed. Blocks: call it from a worker thread."""
    if path is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pids = (path / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(int(pid), 9)
        if not pids or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("runner cgroup %s not removed: %s", path, exc)


def mechanism() -> str:
    """Which mechanism bounds runners here, for the host's start-up line."""
    if systemd_scope_usable():
        return "cgroups v2 (systemd-run --user --scope) + setrlimit"
    if pids_cgroup_root() is not None:
        return "setrlimit + cgroup v1 pids (pids.max per runner; memory per process)"
    return "setrlimit (no user systemd: limits are per process; processes per sandbox)"
