"""What a spare process runs (``carapace.sandbox.spare``):
``python -I -S spare_exec.py FD HOST_PID [CGROUP]``.

The standard library only (it runs without ``site`` and imports nothing of carapace). First
it asks for the parent-death signal (it dies with the host: the thread that started it is
the host's long-lived fork thread) and exits if the host ``HOST_PID`` is gone already; the
host starts it without any code between fork and exec, so the host's fork is a ``vfork``
(a fork of the host copied its page tables with the GIL held: 3 ms typical, 20-50 ms under
load, a stall of the host's event loop per runner start). It makes its own session only
then (``setsid``: a new scheduling group where the kernel groups sessions, so until its
exec the child shares the host's group and is scheduled as promptly as the host; the
vforking thread holds the GIL until the child's exec). Then it joins the pids cgroup
``CGROUP`` (a folder) when one is named: here, after the exec, and not between fork and
exec, where the slow join would keep copies of the host's descriptors (its home lock among
them) open in the child. Then it waits
for one request on the socket ``FD`` from the host; end of file (the host closed it or
died) means exit. A request is JSON (``argv``, ``exe``, ``env``, ``cwd``, ``rlimits``,
``fds``: the number each passed descriptor must have) with the descriptors attached
(``SCM_RIGHTS``): set the limits, place the descriptors, close everything else, exec.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys


def serve(sock: socket.socket) -> None:
    try:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 256)
    except OSError:
        os._exit(0)
    if not msg:
        os._exit(0)
    req = json.loads(msg)
    for which, value in req["rlimits"]:
        try:
            hard = resource.getrlimit(which)[1]
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    targets = req["fds"]
    base = max([*targets, *fds, sock.fileno()]) + 1
    high = [os.dup2(fd, base + i, inheritable=False) for i, fd in enumerate(fds)]
    for fd in fds:
        os.close(fd)
    sock.close()
    for fd, target in zip(high, targets, strict=True):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    try:
        os.chdir(req["cwd"])
        os.execve(req["exe"], req["argv"], req["env"])
    except OSError as exc:
        os.write(2, f"carapace spare: cannot start {req['argv'][0]}: {exc}\n".encode())
    os._exit(127)


def join(cgroup: str) -> None:
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
            fh.write("0\n")
    except OSError:
        os._exit(1)  # no spare rather than one outside its cgroup


def die_with(host_pid: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    if os.getppid() != host_pid:  # the host died before the signal was asked for
        os._exit(0)


if __name__ == "__main__":
    die_with(int(sys.argv[2]))
    os.setsid()
    if len(sys.argv) > 3:
        join(sys.argv[3])
    serve(socket.socket(fileno=int(sys.argv[1])))
