"""Run by the agent's bash: look for MARKER in every other process it can see, and try to
trace the runner (argv[2], bash's parent). PTRACE_SEIZE, never ATTACH: a seize stops
nothing, so a probe that succeeds (on old code) leaves every process running."""

import ctypes
import os
import sys

# The marker comes in two halves so that the command line (which the runner holds in
# memory as part of the conversation) never contains it whole.
marker = (sys.argv[1] + sys.argv[2]).encode()
runner = int(sys.argv[3])
only_runner = sys.argv[4:] == ["runner-only"]  # unsandboxed: never look at other processes
me = os.getpid()
hits = []
seen = 0
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in (me, os.getppid()):
        continue
    if only_runner and int(name) != runner:
        continue
    seen += 1
    for part in ("environ", "cmdline"):
        try:
            with open(f"/proc/{name}/{part}", "rb") as fh:
                if marker in fh.read():
                    hits.append(f"{name}/{part}")
        except OSError:
            pass
    try:
        with open(f"/proc/{name}/maps") as fh:
            maps = fh.read().splitlines()
        with open(f"/proc/{name}/mem", "rb", 0) as mem:
            for line in maps:
                span, perms = line.split()[:2]
                if "r" not in perms:
                    continue
                lo, hi = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(lo)
                    if marker in mem.read(min(hi - lo, 64 << 20)):
                        hits.append(f"{name}/mem")
                        break
                except (OSError, OverflowError, ValueError):
                    continue
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(0x4206, runner, None, None) == 0:  # PTRACE_SEIZE: does not stop the tracee
    hits.append(f"{runner}/ptrace")
    libc.ptrace(17, runner, None, None)  # PTRACE_DETACH
print(f"probed {seen} process(es); hits: {' '.join(hits) or 'none'}")
