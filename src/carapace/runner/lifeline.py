"""The runner's lifeline to its sandbox wrapper (issue 14 item 8).

bubblewrap's ``--die-with-parent`` is set by the sandbox's child process *after* it was
forked: a wrapper killed in its first milliseconds leaves the runner orphaned, serving its
session beside the runner the host starts next and outliving a clean stop. So the bwrap
backend gives the runner a pipe whose write end only the wrapper keeps open (bwrap's
``--sync-fd``; bwrap closes every other inherited descriptor in its monitoring process):
``CARAPACE_LIFELINE=<read fd>,<write fd>``. The runner closes its inherited copy of the
write end at once and watches the read end; end of file means the wrapper is gone, and the
runner exits on the spot (as pid 1 of its namespace, taking everything in the sandbox with
it). Nothing here may import more than the standard library: it runs before the rest.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import MutableMapping

ENV = "CARAPACE_LIFELINE"
EXIT_CODE = 70  # the wrapper went away: nothing to report to


def parse(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    parts = raw.split(",")
    if len(parts) != 2 or not all(p.isdigit() and len(p) < 8 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def watch(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Start watching the lifeline named in ``environ`` (removed from it); True when one
    was given. The process exits with ``EXIT_CODE`` when the wrapper's end closes."""
    fds = parse(environ.pop(ENV, None))
    if fds is None:
        return False
    read_fd, write_fd = fds
    try:
        same_pipe = os.fstat(read_fd).st_ino == os.fstat(write_fd).st_ino
    except OSError:
        same_pipe = False  # bwrap closed it already (or never passed it): nothing to close
    if same_pipe:
        os.close(write_fd)
    try:
        os.set_inheritable(read_fd, False)  # commands the runner starts never hold it
    except OSError:
        return False

    def wait() -> None:
        while True:
            try:
                if os.read(read_fd, 64):
                    continue
            except InterruptedError:
                continue
            except OSError:
                pass
            break
        with contextlib.suppress(OSError):
            os.write(2, b"carapace runner: sandbox wrapper gone; exiting\n")
        os._exit(EXIT_CODE)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()
    return True
