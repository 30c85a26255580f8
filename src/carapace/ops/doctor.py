"""``carapace doctor`` findings about operations: the installed service unit and sizes."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from carapace.config import Home

if TYPE_CHECKING:
    from carapace.migrate.doctor import DoctorReport


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def journal_check(home: Home, rep: DoctorReport) -> None:
    """Messages acknowledged but not yet in their sessions' files (host/ingest_journal.py):
    while no host runs, the next start writes them; said so they are not taken for lost."""
    import sqlite3

    from carapace.ops.backup import host_running

    path = home.ingest_journal
    for aside in sorted(path.parent.glob(f"{path.name}.unreadable-*")):
        if not aside.name.endswith(("-wal", "-shm")):
            rep.add("warning", "ingest-journal-set-aside", str(aside),
                    "an unreadable ingest journal was set aside at a start: messages "
                    "acknowledged but not yet written before that start may be in it")  # fmt: skip
    if not path.is_file() or path.is_symlink() or host_running(home):
        return
    try:
        conn = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True, timeout=5)
        try:
            n = int(conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        rep.add("error", "ingest-journal", str(path), f"cannot be read ({exc}): messages "
                "acknowledged before the last host stopped may be in it")  # fmt: skip
        return
    if n:
        rep.add("warning", "ingest-journal", str(path),
                f"{n} acknowledged message(s) not yet in their sessions' files (the last "
                "host stopped before writing them); the next `carapace run` writes them "
                "before it starts its channels")  # fmt: skip


def ops_checks(home: Home, rep: DoctorReport) -> None:
    from carapace.ops import service
    from carapace.ops.retention import sizes

    for problem in service.check(home):
        rep.add("warning", "service-unit", "service", problem)
    env = home.root / "carapace.env"
    try:
        st = os.lstat(env)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        rep.add("warning", "env-file-readable", str(env),
                f"mode {stat.S_IMODE(st.st_mode):o}: others can read the service's "
                "environment (keys); chmod 600 it")  # fmt: skip
    journal_check(home, rep)
    s = sizes(home)
    rep.add("info", "sizes", str(home.root),
            ", ".join(f"{k.replace('_', ' ')} {_mib(v)}" for k, v in s.items())
            + "; `carapace admin sessions compact` applies the retention policy")  # fmt: skip
