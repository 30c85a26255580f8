"""The ``bwrap`` runner backend: a runner inside a Linux bubblewrap sandbox (DESIGN §2, §5).

What the sandboxed runner sees (everything else of the host is absent)::

    /usr /bin /sbin /lib* /etc/{ssl,ca-certificates,alternatives,ld.so.*,localtime}  ro
    /etc/{resolv.conf,hosts,nsswitch.conf,gai.conf,host.conf}     ro, only with network
    sys.base_prefix, sys.prefix, the folder holding ``carapace``   ro (the interpreter, venv, code)
    /proc (new pid namespace), /dev (minimal), /tmp (fresh tmpfs of limits.tmp_mb)
    <session dir>                     ro, same path (the runner takes paths as arguments)
      outbound.db outbound.db-journal .heartbeat outbox/      rw on top (the runner's files)
      conversations/                  rw on top (this session's transcript)
      inbound.db inbound.db-journal   ro (also bound explicitly): host commits seen live
    <agent dir>                       rw, same path; cwd and $HOME
    <agent dir>/{container.json,CLAUDE.md,.claude-fragments}   ro on top, when present, bound
                                      from descriptors opened without following links
    <home>/groups/global              ro, when present
    /workspace/extra/<name>           validated additional mounts (see ``mounts.py``)

The session folder itself is read-only so the runner cannot create, replace or remove any
entry in it: no planted ``inbound.db-journal`` (a "hot journal" the host would roll back
into ``inbound.db``) and no planted ``inbound.db-wal`` (SQLite opens a database in WAL mode
whenever that file exists, and a checkpoint would copy its pages into ``inbound.db``). The
session DBs use ``journal_mode=PERSIST`` (``inbound.db``) and ``TRUNCATE`` (``outbound.db``),
so the journals are created once and never deleted;
the backend creates any missing one (and ``.heartbeat``, mtime 0 = "no beat yet") on the
host side before each start. The runner gets ``CARAPACE_SANDBOX=bwrap``.

Namespaces: all unshared (user, pid, ipc, uts, cgroup, mount, net); ``--share-net`` only
when the group is granted the network (``network: true``; default off: an empty network
namespace with only its own loopback). Model calls and ``web_fetch`` go through the host's
egress proxy, a unix socket bound at ``/run/carapace/proxy.sock`` (``CARAPACE_PROXY_SOCKET``).
No provider key is ever in the sandbox's environment. All capabilities are dropped, the environment is cleared and only
what the host passes is set; the sandbox dies with the host (``--die-with-parent``) and has
its own session (``--new-session``: no terminal injection). The runner is the pid
namespace's init (``--as-pid-1``): bwrap, whose command line and memory hold the runner's
environment, is not visible inside, and when the runner dies the kernel kills whatever is
left in the sandbox (docs/sandbox.md, "Process boundary"). bwrap starts under the agent
group's rlimits (``carapace.limits``), in its own systemd scope when one is available.

Stopping: bwrap does not forward signals, and killing it kills the runner at once. So
``SIGTERM`` goes to the processes *inside* the sandbox (the runner exits cleanly, then bwrap
exits with its code); ``SIGKILL`` goes to bwrap's group and everything below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import carapace
from carapace.db.session import SessionPaths, ensure_journals
from carapace.errors import ConfigError, ValidationError
from carapace.limits import Limits, scope_argv, systemd_scope_usable
from carapace.runner.lifeline import ENV as LIFELINE_ENV
from carapace.runner.procs import descendants
from carapace.sandbox import netns
from carapace.sandbox.agent_binds import PROJECT_SETTINGS, close_fds, open_agent_binds
from carapace.sandbox.mounts import EXTRA_ROOT, Mount, check_not_forbidden
from carapace.sandbox.process import (
    PROXY_SOCKET_ENV,
    SECRET_ENV,
    Child,
    ProcHandle,
    RunnerBackend,
    RunnerHandle,
    RunnerSpec,
    SubprocessBackend,
    open_runner_log,
    start_runner,
    with_runner_path,
)

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_ETC = (
    "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/mime.types",
)  # fmt: skip
NETWORK_ETC = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
               "/etc/host.conf")  # fmt: skip
SESSION_WRITABLE = ("outbound.db", "outbound.db-journal", ".heartbeat", "outbox", "conversations")
SESSION_READ_ONLY = ("inbound.db", "inbound.db-journal")
# Host environment variables the backend passes on by default: time zone and the like. No
# provider key: the host's egress proxy adds keys outside the sandbox (carapace.proxy).
DEFAULT_PASS_ENV = (
    "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "CARAPACE_TZ", "TZ", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
    "https_proxy", "http_proxy", "no_proxy", "SSL_CERT_FILE",
)  # fmt: skip
BACKENDS = ("bwrap", "subprocess")
SANDBOX_PROXY_SOCKET = "/run/carapace/proxy.sock"


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that decides what one sandboxed runner can see and do."""

    session_dir: Path
    agent_dir: Path
    runner_argv: Sequence[str]
    global_dir: Path | None = None
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)
    network: bool = False
    mounts: Sequence[Mount] = ()
    bwrap: str = "bwrap"
    tmp_mb: int = Limits.tmp_mb  # size of the sandbox's /tmp (tmpfs)
    proxy_socket: Path | None = None  # host path; bound at SANDBOX_PROXY_SOCKET
    info_fd: int | None = None  # network: bwrap reports the sandbox pid here (netns.py)
    lifeline: tuple[int, int] | None = None  # (read, write) pipe: runner/lifeline.py
    home: Path | None = None  # the carapace home: never mountable (``recheck_mount``)
    packages_dir: Path | None = None  # the group's installed packages (carapace.packages), ro


def recheck_mount(mount: Mount, home: Path | None) -> None:
    """The builder's own check of a mount it is handed (``validate_mounts`` made it):
    a real absolute host path (no link), nothing forbidden, a target under
    ``/workspace/extra``. ``ConfigError`` otherwise: the sandbox is not started."""
    host = str(mount.host_path)
    try:
        if not os.path.isabs(host) or os.path.realpath(host) != os.path.normpath(host):
            raise ValidationError(f"mount host path is not a real absolute path: {host!r}")
        check_not_forbidden(Path(host), home)
        target = mount.sandbox_path
        if ".." in target.parts or not target.is_relative_to(EXTRA_ROOT) or target == EXTRA_ROOT:
            raise ValidationError(f"mount target outside {EXTRA_ROOT}: {target}")
    except ValidationError as exc:
        raise ConfigError(f"refusing to start the sandbox: {exc}") from None


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def python_paths(python: str = sys.executable) -> list[Path]:
    """Folders the interpreter and carapace live in, outer ones only, host-real paths."""
    return list(_python_paths(python))


@functools.cache
def _python_paths(python: str) -> tuple[Path, ...]:  # the same for every start: once
    candidates = [Path(sys.base_prefix), Path(sys.prefix), Path(carapace.__file__).parent.parent]
    exe = Path(python)
    candidates += [exe.parent, Path(os.path.realpath(exe)).parent]
    candidates = [Path(os.path.abspath(p)) for p in candidates]
    out: list[Path] = []
    for path in sorted(set(candidates), key=lambda p: len(p.parts)):
        if not _inside(path, out) and not _inside(path, [Path(d) for d in SYSTEM_DIRS]):
            out.append(path)
    return tuple(out)


def _system_args(network: bool) -> list[str]:
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for p in SYSTEM_ETC + (NETWORK_ETC if network else ()):
        if p == "/etc/resolv.conf":
            args += ["--ro-bind", str(netns.resolv_conf()), p]
        else:
            args += ["--ro-bind-try", p, p]
    return args


def bwrap_argv(spec: SandboxSpec, agent_fds: Sequence[tuple[int, str]] = ()) -> list[str]:
    """The full ``bwrap`` command line that runs ``spec.runner_argv`` in the sandbox.

    ``agent_fds`` (from ``open_agent_binds``) must be inherited by bwrap. Creates the
    session files it binds when missing (``prepare_session_dir``)."""
    session = Path(os.path.abspath(spec.session_dir))
    prepare_session_dir(session)
    agent = Path(os.path.abspath(spec.agent_dir))
    argv = [spec.bwrap, "--unshare-all"]  # network: own namespace + slirp4netns (netns.py)
    if spec.info_fd is not None:
        argv += ["--info-fd", str(spec.info_fd)]
    if spec.lifeline is not None:  # bwrap keeps its status fd open while it lives
        argv += ["--json-status-fd", str(spec.lifeline[1])]
    # --as-pid-1: the runner is the namespace's init, so bwrap (whose memory holds this
    # command line) is not in the sandbox, and when the runner dies the kernel kills
    # everything left in the namespace.
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--as-pid-1"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(spec.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    argv += _system_args(spec.network)
    pypaths = python_paths(spec.python)
    for path in pypaths:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind", str(session), str(session)]
    for name in SESSION_WRITABLE:
        argv += ["--bind", str(session / name), str(session / name)]
    for name in SESSION_READ_ONLY:
        argv += ["--ro-bind", str(session / name), str(session / name)]
    argv += ["--bind", str(agent), str(agent)]
    # Claude Code's project settings (hooks, permissions, env) as an empty read-only folder:
    # nothing the agent wrote there can loosen the claude provider's tool policy
    settings_dir = str(agent / PROJECT_SETTINGS)
    argv += ["--tmpfs", settings_dir, "--remount-ro", settings_dir]
    for fd, name in agent_fds:
        # Bound from a descriptor the host opened without following links: bwrap never
        # resolves a path the agent could have planted (a link to the host's /tmp, /proc…).
        argv += ["--ro-bind-fd", str(fd), str(agent / name)]
    if spec.global_dir is not None and spec.global_dir.is_dir():
        gdir = os.path.abspath(spec.global_dir)
        argv += ["--ro-bind", gdir, gdir]
    for mount in spec.mounts:
        recheck_mount(mount, spec.home)
        argv += ["--ro-bind" if mount.read_only else "--bind", str(mount.host_path)]
        argv.append(str(mount.sandbox_path))
    if spec.proxy_socket is not None:  # the only way out: the host's egress proxy
        argv += ["--bind", str(spec.proxy_socket), SANDBOX_PROXY_SOCKET]
    if spec.packages_dir is not None and spec.packages_dir.is_dir():
        pdir = os.path.abspath(spec.packages_dir)
        argv += ["--ro-bind", pdir, pdir]
    # PYTHONNOUSERSITE: HOME is the group folder, so a user site-packages (and its .pth
    # files, which run code) under it would be the agent's
    env = {"PATH": DEFAULT_PATH, "HOME": str(agent), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
           "CARAPACE_SANDBOX": "bwrap"}  # fmt: skip
    pkg_root = Path(carapace.__file__).parent.parent
    if not _inside(pkg_root, [Path(sys.prefix), Path(sys.base_prefix)]):
        env["PYTHONPATH"] = str(pkg_root)
    env.update(spec.env)
    with_runner_path(env, spec.python)  # the runner starts with -S (no site)
    for name in (*SECRET_ENV, PROXY_SOCKET_ENV):
        env.pop(name, None)
    if spec.proxy_socket is not None:
        env[PROXY_SOCKET_ENV] = SANDBOX_PROXY_SOCKET
    if spec.packages_dir is not None and spec.packages_dir.is_dir():
        from carapace.sandbox.packages import sandbox_env

        env.update(sandbox_env(Path(os.path.abspath(spec.packages_dir)), env["PATH"]))
    env["CARAPACE_SANDBOX"] = "bwrap"
    if spec.lifeline is not None:
        env[LIFELINE_ENV] = f"{spec.lifeline[0]},{spec.lifeline[1]}"
    argv.append("--clearenv")
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    argv += ["--chdir", str(agent), "--", *spec.runner_argv]
    return argv


@functools.cache
def bwrap_available(bwrap: str = "bwrap") -> bool:
    """Whether bubblewrap is installed and can make a sandbox here (probed once)."""
    return bwrap_unusable_reason(bwrap) is None


@functools.cache
def bwrap_unusable_reason(bwrap: str = "bwrap") -> str | None:
    """None when bwrap works, else why not (for skip reasons and log lines)."""
    exe = shutil.which(bwrap)
    if exe is None:
        return f"{bwrap} not found on PATH (install bubblewrap)"
    probe = [exe, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"]
    try:
        res = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} probe failed: {exc}"
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        return f"{bwrap} cannot create a sandbox here: {err[-1] if err else res.returncode}"
    return None


def resolve_backend(preferred: str | None = None, bwrap: str = "bwrap") -> tuple[str, str]:
    """``(backend, why)`` for a configured ``runner_backend``; nothing is logged.

    ``None``/``"auto"``: the strongest available (``bwrap``, else ``subprocess``).
    ``"bwrap"`` when it cannot work is a ``ConfigError``: asked-for isolation is never
    dropped silently. ``"subprocess"`` is honoured, with a note that nothing is isolated.
    """
    name = (preferred or "auto").strip().lower()
    if name not in (*BACKENDS, "auto"):
        raise ConfigError(f"unknown runner backend {preferred!r} (known: auto, bwrap, subprocess)")
    if name == "subprocess":
        return "subprocess", "configured; runners are NOT isolated (development only)"
    reason = bwrap_unusable_reason(bwrap)
    if name == "bwrap":
        if reason is not None:
            raise ConfigError(f"runner backend bwrap requested but unusable: {reason}")
        return "bwrap", "configured"
    if reason is None:
        return "bwrap", "auto: strongest available"
    return "subprocess", f"auto: bwrap unusable ({reason}); runners are NOT isolated"


def choose_backend(preferred: str | None = None, bwrap: str = "bwrap") -> str:
    """The runner backend to use (see ``resolve_backend``), logged with the reason."""
    name, why = resolve_backend(preferred, bwrap)
    log = logger.info if name == "bwrap" or why.startswith("configured") else logger.warning
    log("runner backend: %s (%s)", name, why)
    return name


def prepare_session_dir(session_dir: Path) -> None:
    """Host side, before a start: every file the sandbox binds exists (nothing truncated)."""
    paths = SessionPaths(Path(session_dir))
    ensure_journals(paths)
    paths.outbox.mkdir(exist_ok=True)
    paths.transcripts.mkdir(mode=0o700, exist_ok=True)  # per-session transcripts
    if not paths.heartbeat.exists():
        paths.heartbeat.touch()
        os.utime(paths.heartbeat, (0, 0))  # mtime 0 reads as "no heartbeat yet"


_descendants = descendants  # host pids below a pid (runner/procs.py)


class BwrapHandle(ProcHandle):
    """The pool's handle on one sandbox (``pid`` is bwrap's own, in the host namespace);
    ``helpers`` (slirp4netns) are stopped when the sandbox ends."""

    def __init__(self, proc: Child, cgroup: Path | None = None) -> None:
        super().__init__(proc, cgroup)
        self.helpers: list[asyncio.subprocess.Process] = []
        # the lifeline's read end, held until bwrap exits: bwrap writes its exit status
        # there after the runner (the other reader) is gone, and must not die of SIGPIPE
        self.status_fd: int | None = None

    async def wait(self) -> int:
        try:
            code = await super().wait()  # also removes the runner's cgroup
            # bwrap killed early can leave its child before exec, blocked for good, still
            # in bwrap's process group (--new-session comes later): end it with the group.
            # A runner it already started ends on its lifeline (runner/lifeline.py).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return code
        finally:
            if self.status_fd is not None:
                close_fds([(self.status_fd, "lifeline")])
                self.status_fd = None
            for helper in self.helpers:
                if helper.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        helper.kill()
                    await helper.wait()

    signal_blocks = True  # it walks /proc (~7 ms): the pool calls it in a worker thread

    def signal(self, sig: int) -> None:
        if self.proc.returncode is not None:
            return
        inner = _descendants(self.proc.pid)
        if sig != signal.SIGKILL and inner:
            # The namespace's init (inner[0], the runner) gets only signals it handles.
            targets = inner
        else:
            targets = [self.proc.pid, *inner]
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


class BwrapBackend:
    """Runner backend for ``RunnerPool``: ``python -m carapace.runner`` inside bubblewrap.

    * ``home``: the carapace home; its ``groups/global`` is mounted read-only.
    * ``network``: a bool or a function of the ``RunnerSpec`` (per agent group config).
    * ``mounts_for``: the agent group's ``additional_mounts`` for a spec, already validated
      (``mounts.validate_mounts``); default none.
    * ``pass_env``: host variables copied in when set (``spec.env`` is always passed).
    * ``spare``: start runners through a pre-started process (``carapace.sandbox.spare``).
    """

    name = "bwrap"

    def __init__(
        self,
        home: Path | None = None,
        *,
        network: bool | Callable[[RunnerSpec], bool] = False,
        mounts_for: Callable[[RunnerSpec], Sequence[Mount]] | None = None,
        pass_env: Sequence[str] = DEFAULT_PASS_ENV,
        python: str | None = None,
        module: str = "carapace.runner",
        bwrap: str = "bwrap",
        spare: bool = True,
    ) -> None:
        self.home = home
        self.network = network
        self.mounts_for = mounts_for
        self.pass_env = tuple(pass_env)
        self.python = python or sys.executable
        self.bwrap = bwrap
        self._runner = SubprocessBackend(module=module, python=self.python, pass_env=(),
                                         spare=spare)  # fmt: skip

    def describe(self) -> str:
        net = self.network if isinstance(self.network, bool) else "per agent group"
        return f"bwrap sandbox (network: {net}, bwrap: {shutil.which(self.bwrap) or 'missing'})"

    def sandbox_spec(self, spec: RunnerSpec) -> SandboxSpec:
        env = {k: os.environ[k] for k in self.pass_env if os.environ.get(k)}
        env.update(spec.env)
        network = self.network if isinstance(self.network, bool) else self.network(spec)
        global_dir = self.home / "groups" / "global" if self.home is not None else None
        if global_dir is not None and os.path.abspath(global_dir) == os.path.abspath(
            spec.agent_dir
        ):
            global_dir = None
        return SandboxSpec(
            session_dir=spec.session_dir,
            agent_dir=spec.agent_dir,
            runner_argv=self._runner.argv(spec),
            global_dir=global_dir,
            python=self.python,
            env=env,
            network=network,
            mounts=tuple(self.mounts_for(spec)) if self.mounts_for is not None else (),
            bwrap=self.bwrap,
            tmp_mb=spec.limits.tmp_mb,
            proxy_socket=spec.proxy_socket,
            home=self.home,
            packages_dir=self._packages_dir(spec.agent_group_id),
        )

    def _packages_dir(self, agent_group_id: str) -> Path | None:
        if self.home is None:
            return None
        from carapace.config import Home
        from carapace.sandbox.packages import group_dir

        try:
            return group_dir(Home(self.home), agent_group_id)
        except ValidationError:
            return None

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        sb = self.sandbox_spec(spec)  # group settings (central DB): on the event loop
        if sb.network:
            netns.require_slirp()
        # the file work of a start (the agent folder's binds, the session files bwrap
        # binds, the log) runs in a worker thread: many starts at once never stall the loop
        st = await asyncio.to_thread(_open_for_start, sb, spec, systemd_scope_usable())
        try:
            proc, cgroup = await start_runner(
                st.argv,
                name=spec.session_id,
                limits=spec.limits,
                pass_fds=st.fds,
                stderr=st.log,
                env={"PATH": os.environ.get("PATH", DEFAULT_PATH)},
                cwd=str(spec.agent_dir),
                spare=self._runner.spare,
            )
        except BaseException:
            if st.info_r is not None:
                os.close(st.info_r)
            os.close(st.life_r)
            raise
        finally:
            st.close_parent_copies()
        handle = BwrapHandle(proc, cgroup)
        handle.status_fd = st.life_r
        if st.info_r is not None:
            try:
                handle.helpers.append(await netns.attach_slirp(st.info_r))
            except Exception:
                handle.signal(signal.SIGKILL)
                raise
        logger.debug("session %s: sandboxed runner pid %d", spec.session_id, proc.pid)
        return handle


@dataclass
class _Opened:
    """What a start hands bwrap: its command line, the descriptors it inherits, the log."""

    argv: list[str]
    fds: list[int]
    log: IO[bytes]
    agent_fds: list[tuple[int, str]]
    life_r: int  # kept here after the start: see BwrapHandle.status_fd
    life_w: int
    info_r: int | None
    info_w: int | None

    def close_parent_copies(self) -> None:
        """After the start only the child holds these."""
        self.log.close()
        close_fds(self.agent_fds)
        os.close(self.life_w)
        if self.info_w is not None:
            os.close(self.info_w)


def _open_for_start(sb: SandboxSpec, spec: RunnerSpec, scope: bool) -> _Opened:
    """The blocking part of a start (a worker thread): pipes, the agent folder's binds,
    the bwrap command line (creates the session files it binds), the log. On failure
    everything opened here is closed again."""
    opened: list[int] = []
    agent_fds: list[tuple[int, str]] = []
    try:
        info_r = info_w = None
        if sb.network:
            info_r, info_w = os.pipe()
            opened += [info_r, info_w]
            sb = dataclasses.replace(sb, info_fd=info_w)
        # The runner's lifeline (runner/lifeline.py): after the start only bwrap holds
        # the write end, so a wrapper killed before --die-with-parent took hold ends it.
        life_r, life_w = os.pipe()
        opened += [life_r, life_w]
        sb = dataclasses.replace(sb, lifeline=(life_r, life_w))
        agent_fds = open_agent_binds(Path(os.path.abspath(spec.agent_dir)))
        argv = bwrap_argv(sb, agent_fds)
        if scope:
            argv = [*scope_argv(spec.limits), *argv]
        log = open_runner_log(spec.session_dir)  # handed to the child
    except BaseException:
        close_fds(agent_fds)
        for fd in opened:
            os.close(fd)
        raise
    fds = [fd for fd, _ in agent_fds] + ([info_w] if info_w is not None else [])
    return _Opened(argv, [*fds, life_r, life_w], log, agent_fds, life_r, life_w, info_r, info_w)


if TYPE_CHECKING:  # BwrapBackend satisfies the pool's seam
    _backend: RunnerBackend = BwrapBackend()
