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
    s = sizes(home)
    rep.add("info", "sizes", str(home.root),
            ", ".join(f"{k.replace('_', ' ')} {_mib(v)}" for k, v in s.items())
            + "; `carapace admin sessions compact` applies the retention policy")  # fmt: skip
