"""``network: true`` for a bwrap sandbox: its own network namespace, connected to the
outside by ``slirp4netns`` (user-mode networking), never to the host's loopback.

bwrap unshares the network as always and reports the sandbox's pid on ``--info-fd``; the
host then starts ``slirp4netns --configure --disable-host-loopback`` for that pid: the
sandbox gets ``tap0`` (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3), outgoing TCP/UDP
is relayed by the slirp process as the host user, and the gateway address does not lead
to the host's 127.0.0.1. Abstract unix sockets stay per namespace, so the host's are out
of reach too. Without ``slirp4netns`` a group with ``network: true`` does not start (the
alternative, bwrap's ``--share-net``, would expose the host's loopback); ``doctor`` says so.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from carapace.errors import ConfigError
from carapace.sandbox.process import host_tmp_dir

logger = logging.getLogger(__name__)

SLIRP = "slirp4netns"
RESOLV_CONF = "nameserver 10.0.2.3\n"
NS_GET_USERNS = 0xB701  # ioctl_ns(2): the owning user namespace of a namespace
SLIRP_READY_S = 10.0  # for slirp4netns to report the network configured
_resolv: Path | None = None


def slirp_path() -> str | None:
    return shutil.which(SLIRP)


def require_slirp() -> str:
    path = slirp_path()
    if path is None:
        raise ConfigError(
            "network: true needs slirp4netns (apt install slirp4netns); without it the "
            "sandbox would share the host's network, loopback included"
        )
    return path


def resolv_conf() -> Path:
    """A host-owned resolv.conf naming slirp's DNS (bound read-only into the sandbox), in
    a temp folder of the host process's (``process.host_tmp_dir``: removed at the
    process's exit, or by the next host's start when the process was killed)."""
    global _resolv
    if _resolv is None or not _resolv.exists():
        folder = host_tmp_dir("net-")
        atexit.register(shutil.rmtree, folder, True)
        path = folder / "resolv.conf"
        path.write_text(RESOLV_CONF, encoding="utf-8")
        _resolv = path
    return _resolv


def _read_child_pid(fd: int) -> int:
    buf = b""
    with contextlib.closing(os.fdopen(fd, "rb", buffering=0)) as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                raise ConfigError("bwrap ended before reporting its sandbox")
            buf += chunk
            try:
                info = json.loads(buf)
            except ValueError:
                continue
            return int(info["child-pid"])


async def attach_slirp(info_fd: int) -> asyncio.subprocess.Process:
    """Wait for bwrap's info on ``info_fd`` (read end), then connect the sandbox: its
    ``slirp4netns`` joins the user namespace that owns the sandbox's network namespace
    (:func:`_netns_owner`) and is waited for until it reports the network configured
    (``--ready-fd``). One that fails is logged with its own words, and the sandbox runs
    without network (before, slirp's errors went nowhere: as a normal user ~5 % of network
    sandboxes had no network, silently)."""
    pid = await asyncio.to_thread(_read_child_pid, info_fd)
    proc, why = await _start_slirp(pid)
    if why and os.path.exists(f"/proc/{pid}"):  # (a sandbox that has ended needs none)
        logger.error("sandbox %d has no network: slirp4netns failed: %s", pid, why)
    return proc


def _netns_owner(pid: int) -> int:
    """An fd of the user namespace that owns the network namespace of ``pid``. Not
    ``/proc/<pid>/ns/user``: an unprivileged bwrap with ``--dev`` maps root first (to mount
    devpts), then moves the sandbox into a second, nested user namespace, and one that
    joins that one cannot enter the network namespace its parent owns."""
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(fcntl.ioctl(net, NS_GET_USERNS))
    finally:
        os.close(net)


async def _start_slirp(pid: int) -> tuple[asyncio.subprocess.Process, str]:
    """One ``slirp4netns`` for the sandbox ``pid``: (the process, "") once it is ready,
    else (the process, ended; why)."""
    try:
        userns = _netns_owner(pid)
    except OSError as exc:  # the sandbox has ended
        userns, userns_path = -1, f"/proc/{pid}/ns/user"
        logger.debug("owner of sandbox %d's network namespace: %s", pid, exc)
    else:
        userns_path = f"/proc/self/fd/{userns}"  # (the same number in slirp4netns)
    ready_r, ready_w = os.pipe()
    with tempfile.TemporaryFile() as err:  # its few lines, read only when it fails
        try:
            proc = await asyncio.create_subprocess_exec(
                require_slirp(), "--configure", "--mtu=65520", "--disable-host-loopback",
                "--ready-fd", str(ready_w), "--userns-path", userns_path, str(pid), "tap0",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=err, start_new_session=True,
                pass_fds=(ready_w, userns) if userns >= 0 else (ready_w,),
            )  # fmt: skip
        finally:
            os.close(ready_w)
            if userns >= 0:
                os.close(userns)
        reading = asyncio.ensure_future(asyncio.to_thread(os.read, ready_r, 1))
        try:
            got = await asyncio.wait_for(asyncio.shield(reading), SLIRP_READY_S)
        except TimeoutError:
            got = b""
        if not got and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # (its end of the pipe closes: the read still waiting ends)
        await reading  # never close the pipe under a read still waiting on it
        os.close(ready_r)
        if got:
            return proc, ""
        await proc.wait()
        err.seek(0)
        text = " ".join(err.read(2000).decode("utf-8", "replace").split())
        return proc, text or f"exit {proc.returncode}"
