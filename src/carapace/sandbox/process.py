"""The runner process contract: what a backend is given (``RunnerSpec``), what it returns
(``RunnerHandle``), the ``RunnerBackend`` protocol every sandbox implements, the runner's
environment allowlist, and the plain ``subprocess`` backend (no sandbox; tests and
``runner_backend = "subprocess"``). The pool (``carapace.host.pool``) only uses these."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol, cast

from carapace.limits import (
    Limits,
    join_cgroup,
    left_by_gone_hosts,
    remove_cgroup,
    rlimit_preexec,
    runner_cgroup,
    scope_argv,
    systemd_scope_usable,
)
from carapace.safefs import remove_tree
from carapace.sandbox.spare import SpareStarter, fork_thread, launch

logger = logging.getLogger(__name__)

PID_FILE = ".runner.pid"
LOG_FILE = ".runner.log"
LOG_ROTATE_BYTES = 4 * 1024 * 1024  # past this at a start, the log is kept as LOG_FILE.1
# The host variables a runner may get (docs/sandbox.md "Process boundary"); everything else
# of the host's environment stays out. Providers' settings come from the backend's pass_env.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH")


@dataclass(frozen=True)
class RunnerSpec:
    session_id: str
    agent_group_id: str
    session_dir: Path
    agent_dir: Path
    provider: str | None = None
    idle_exit_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)  # the agent group's (carapace.limits)
    proxy_socket: Path | None = None  # the host's egress proxy for this session (host path)


# Provider keys: only the host's egress proxy holds them (carapace.proxy); no runner gets
# them in its environment, sandboxed or not.
SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")
PROXY_SOCKET_ENV = "CARAPACE_PROXY_SOCKET"


class RunnerHandle(Protocol):
    pid: int | None

    async def wait(self) -> int: ...

    def signal(self, sig: int) -> None: ...


class RunnerBackend(Protocol):
    name: str

    async def start(self, spec: RunnerSpec) -> RunnerHandle: ...


@dataclass(frozen=True)
class RunnerExit:
    returncode: int
    reason: str | None  # None: the runner exited on its own (idle exit or crash)
    count_try: bool
    started_at: datetime


def compile_runner_code(package: Path | None = None) -> bool:
    """Write the bytecode of carapace's modules next to them (``__pycache__``, where every
    interpreter looks) when the package folder is writable, as in a source checkout (pip
    writes it for an install). A sandboxed runner cannot write it (read-only mounts,
    ``PYTHONDONTWRITEBYTECODE``) and would otherwise compile every module at every start
    (about half its import time). Up-to-date files are only compared. True when it ran."""
    import compileall

    import carapace

    pkg = package or Path(carapace.__file__).parent
    if not os.access(pkg, os.W_OK):
        return False
    try:
        compileall.compile_dir(str(pkg), quiet=2, workers=1)
    except OSError as exc:
        logger.info("runner bytecode not written: %s", exc)
        return False
    return True


@functools.cache
def runner_sys_path(python: str) -> tuple[str, ...] | None:
    """What a runner started with ``-S`` (no ``site``) puts on ``sys.path`` through
    ``PYTHONPATH``: carapace's own folder first (the host's code, installed or not), then
    the host interpreter's site-packages. ``site`` cost ~4 ms of every runner start (the
    venv's ``.pth`` files; code in them ran in the runner too). None for another
    interpreter than the host's: its own ``site`` finds its packages."""
    if os.path.realpath(python) != os.path.realpath(sys.executable) or sys.flags.no_site:
        return None
    import site

    import carapace

    out: list[str] = []
    for folder in (str(Path(carapace.__file__).parent.parent), *site.getsitepackages()):
        if os.path.isabs(folder) and os.path.isdir(folder) and folder not in out:
            out.append(folder)
    return tuple(out)


def with_runner_path(env: dict[str, str], python: str) -> dict[str, str]:
    """``env`` with :func:`runner_sys_path` after its own ``PYTHONPATH`` entries."""
    extra = runner_sys_path(python)
    if extra:
        given = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*given, *(p for p in extra if p not in given)])
    return env


def runner_env(spec: RunnerSpec, pass_env: Sequence[str]) -> dict[str, str]:
    """A runner's whole environment: allow-listed host variables, then ``spec.env``.
    ``PYTHONPATH`` keeps only absolute folders: an empty or relative entry would be the
    runner's working folder, the agent's group folder (see ``SubprocessBackend.argv``)."""
    names = (*BASE_ENV, *pass_env)
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    env.update(spec.env)
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


def child_setup(limits: Limits, cgroup: Path | None = None) -> Callable[[], None]:
    """``preexec_fn`` of a runner: die with the host, join its cgroup, the group's rlimits."""
    apply_limits = rlimit_preexec(limits)
    prctl = _prctl()  # looked up here: no dlopen between fork and exec

    def setup() -> None:  # pragma: no cover - runs in the child
        _pdeathsig(prctl)
        join_cgroup(cgroup)
        apply_limits()

    return setup


@functools.cache
def _prctl() -> Callable[..., int] | None:
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


def _pdeathsig(prctl: Callable[..., int] | None) -> None:  # pragma: no cover - in the child
    """Runners die with the host (Linux): no orphan keeps working after a host crash."""
    if prctl is not None:
        with contextlib.suppress(Exception):
            prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class Child:
    """A runner process started off the event loop (``start_child``); its exit is awaited
    through a pidfd, so no thread waits per runner. Quacks like the part of
    ``asyncio.subprocess.Process`` the handles use."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def send_signal(self, sig: int) -> None:
        if self.popen.returncode is None:
            self.popen.send_signal(sig)

    async def wait(self) -> int:
        if self._exited is None:
            self._exited = asyncio.get_running_loop().create_future()
            self._watch(self._exited)
        return await asyncio.shield(self._exited)

    def _watch(self, fut: asyncio.Future[int]) -> None:
        loop = fut.get_loop()

        def done(code: int) -> None:
            if not fut.done():
                fut.set_result(code)

        try:
            pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # no pidfd (old kernel): one thread waits instead
            threading.Thread(
                target=lambda: loop.call_soon_threadsafe(done, self.popen.wait()),
                name=f"wait-{self.pid}", daemon=True,
            ).start()  # fmt: skip
            return

        def readable() -> None:
            code = self.popen.poll()
            if code is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                done(code)

        loop.add_reader(pidfd, readable)
        readable()  # it may be gone already


async def start_child(argv: Sequence[str], *, env: dict[str, str], cwd: str, stderr: Any,
                      pass_fds: Sequence[int] = (),
                      preexec_fn: Callable[[], None] | None = None) -> Child:  # fmt: skip
    """Start a runner process (own session, stdin/stdout on /dev/null) in a worker thread:
    the fork, the ``preexec_fn`` (a cgroup join can take tens of ms) and the exec never
    stall the host's event loop. A start whose caller is cancelled is killed."""

    def make() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            env=env, cwd=cwd, start_new_session=True, pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
        )  # fmt: skip

    made = fork_thread.submit(make)
    try:
        popen = cast("subprocess.Popen[bytes]", await asyncio.shield(asyncio.wrap_future(made)))
    except asyncio.CancelledError:
        # on the thread's own future: it runs in that thread once the fork ends, even when
        # this loop is closed by then (a host stopping); the loop's copy would never run
        made.add_done_callback(_kill_started)
        raise
    return Child(popen)


_spares: dict[str, SpareStarter] = {}


def spare_starter(python: str) -> SpareStarter:
    """The host process's spare for runners of ``python`` (one, shared by its backends)."""
    starter = _spares.get(python)
    if starter is None:
        if not _spares:
            atexit.register(close_spares)
        starter = _spares[python] = SpareStarter(python)
    return starter


def close_spares() -> None:
    """End the ready spares and remove their cgroups (at the host process's exit; what a
    killed host leaves, the next host's start removes: ``limits.sweep_cgroups``)."""
    for starter in list(_spares.values()):
        starter.close()


async def start_runner(argv: Sequence[str], *, name: str, limits: Limits, env: dict[str, str],
                       cwd: str, stderr: IO[bytes], pass_fds: Sequence[int] = (),
                       spare: SpareStarter | None = None) -> tuple[Child, Path | None]:  # fmt: skip
    """Start one runner: through a spare (the ready one, else one made for this start),
    else (a spare cannot be made, or ``spare`` is None: a fork of the host, its own pids
    cgroup ``name``, the limits) off the event loop. Returns the child and its cgroup
    (removed after its exit by the handle)."""
    if spare is not None:
        ready = spare.take(limits)
        if ready is None:  # none ready: one made for this start (a vfork of the host)
            try:
                ready = await spare.make_now(limits)
            except Exception as exc:
                logger.info("no spare runner process (%s): ordinary start", exc)
        if ready is not None:
            try:
                popen = launch(ready, argv, env=env, cwd=cwd, stderr=stderr.fileno(),
                               pass_fds=pass_fds, limits=limits)  # fmt: skip
            except FileNotFoundError:
                raise
            except OSError as exc:
                logger.info("spare runner process unusable (%s): ordinary start", exc)
            else:
                spare.used += 1
                return Child(popen), ready.cgroup
    cgroup = runner_cgroup(name, limits)
    try:
        child = await start_child(
            argv, env=env, cwd=cwd, stderr=stderr, pass_fds=pass_fds,
            preexec_fn=child_setup(limits, cgroup) if sys.platform.startswith("linux") else None,
        )  # fmt: skip
    except BaseException:
        remove_cgroup(cgroup)
        raise
    return child, cgroup


def _kill_started(fut: concurrent.futures.Future[object]) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    popen = cast("subprocess.Popen[bytes]", fut.result())
    with contextlib.suppress(OSError):
        os.killpg(popen.pid, signal.SIGKILL)
    threading.Thread(target=popen.wait, daemon=True).start()


def proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def open_runner_log(session_dir: Path) -> IO[bytes]:
    """The runner's log (its stderr), opened by the host for appending, never through a
    link, and only as a regular file (a FIFO in its place fails at once, where an open for
    writing would wait for a reader). Past :data:`LOG_ROTATE_BYTES` it is renamed
    ``.runner.log.1`` (replacing the one before) and a new one is started: a session's logs
    stay under ~8 MiB where they grew by ~300 bytes a message for as long as the session
    lived (until ``file_size_mb`` stopped every write). Blocking: from a worker thread."""
    path = Path(session_dir) / LOG_FILE
    fd, size = _open_log(path)
    try:
        if size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(LOG_FILE + ".1"))  # a rename: no link followed
            os.close(fd)
            fd = -1
            fd, _ = _open_log(path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _open_log(path: Path) -> tuple[int, int]:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd, st.st_size


TMP_PREFIX = "carapace-tmp-"  # + the host's pid + "-": an unsandboxed runner's TMPDIR
_TMP_OWNED = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-")


def host_tmp_dir(tag: str = "") -> Path:
    """A new owner-only folder in the host's temp folder, named for the host process
    (``carapace-tmp-<pid>-<tag>…``): its maker removes it, and the next host's start
    (:func:`sweep_tmp_dirs`) when this process was killed first. An unsandboxed runner's
    ``TMPDIR`` (its own temp folder and its agent's commands' files; removed after its
    exit, killed or not: in bwrap the sandbox's ``/tmp`` is a tmpfs of its own) and the
    network sandboxes' ``resolv.conf`` folder."""
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{tag}"))


def sweep_tmp_dirs(base: str | None = None) -> int:
    """Remove the runner temp folders of host processes that are gone (a host killed while
    its unsandboxed runners ran): this user's own folders only, never through a link.
    Returns how many were removed."""
    base = base or tempfile.gettempdir()
    removed = 0
    for name in left_by_gone_hosts(base, _TMP_OWNED):
        path = Path(base, name)
        try:
            st = path.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue  # a link, a file, or another user's: not ours to remove
        remove_tree(path, "runner temp folder")
        removed += not path.exists()
    return removed


class ProcHandle:
    """The pool's handle on one runner process (its own process group)."""

    def __init__(self, proc: Child, cgroup: Path | None = None,
                 tmp_dir: Path | None = None) -> None:  # fmt: skip
        self.proc = proc
        self.pid: int | None = proc.pid
        self.cgroup = cgroup  # the runner's own pids cgroup, removed after its exit
        self.tmp_dir = tmp_dir  # an unsandboxed runner's TMPDIR, removed after its exit

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            # cgroupfs reads and an rmdir can take tens of ms under load: not on the loop
            await asyncio.to_thread(remove_cgroup, cgroup)
        if self.tmp_dir is not None:
            tmp, self.tmp_dir = self.tmp_dir, None
            await asyncio.to_thread(remove_tree, tmp, "runner temp folder")
        return code

    def signal(self, sig: int) -> None:
        if self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self.proc.send_signal(sig)


class SubprocessBackend:
    """No isolation: ``python -m carapace.runner`` as a child process (development, tests)."""

    name = "subprocess"

    def __init__(
        self,
        module: str = "carapace.runner",
        python: str | None = None,
        pass_env: Sequence[str] | None = None,
        *,
        spare: bool = True,
    ) -> None:
        self.module = module
        self.python = python or sys.executable
        if pass_env is None:
            from carapace.sandbox.bwrap import DEFAULT_PASS_ENV

            pass_env = DEFAULT_PASS_ENV
        self.pass_env = tuple(pass_env)
        self.spare: SpareStarter | None = spare_starter(self.python) if spare else None

    def argv(self, spec: RunnerSpec) -> list[str]:
        # -P: the runner's working folder (the agent's group folder) is not put first on
        # sys.path, where a module the agent wrote there (json.py, dataclasses.py …) would
        # run inside the runner at its next start, before it hardens itself
        # -S: no ``site``; the packages come from PYTHONPATH (runner_sys_path)
        flags = ["-P", "-S"] if runner_sys_path(self.python) is not None else ["-P"]
        argv = [self.python, *flags, "-m", self.module, "--session-dir", str(spec.session_dir),
                "--agent-dir", str(spec.agent_dir)]  # fmt: skip
        if spec.provider:
            argv += ["--provider", spec.provider]
        if spec.idle_exit_s is not None:
            argv += ["--idle-exit", f"{spec.idle_exit_s:g}"]
        return argv

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        env = {k: v for k, v in runner_env(spec, self.pass_env).items() if k not in SECRET_ENV}
        with_runner_path(env, self.python)
        env.pop(PROXY_SOCKET_ENV, None)
        if spec.proxy_socket is not None:
            env[PROXY_SOCKET_ENV] = str(spec.proxy_socket)
        argv = self.argv(spec)
        if systemd_scope_usable():
            argv = [*scope_argv(spec.limits), *argv]
        tmp = host_tmp_dir()
        env["TMPDIR"] = str(tmp)
        try:
            log = await asyncio.to_thread(open_runner_log, spec.session_dir)
            with log:  # handed to the child
                proc, cgroup = await start_runner(
                    argv, name=spec.session_id, limits=spec.limits, env=env,
                    cwd=str(spec.agent_dir), stderr=log, spare=self.spare,
                )  # fmt: skip
        except BaseException:
            remove_tree(tmp, "runner temp folder")
            raise
        return ProcHandle(proc, cgroup, tmp)
