"""``carapace doctor`` findings about operations: the installed service unit and sizes."""

from __future__ import annotations

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
    s = sizes(home)
    rep.add("info", "sizes", str(home.root),
            ", ".join(f"{k.replace('_', ' ')} {_mib(v)}" for k, v in s.items())
            + "; `carapace admin sessions compact` applies the retention policy")  # fmt: skip
