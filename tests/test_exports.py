"""The public surface stays small and complete (httpx's habit)."""

from __future__ import annotations

import carapace


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in vars(carapace) if not name.startswith("_")}
    public -= {"annotations"}
    assert carapace.__all__ == sorted(carapace.__all__)
    assert set(carapace.__all__) - {"__version__"} == public - {"__version__"} - _submodules()


def _submodules() -> set[str]:
    import types

    return {n for n, v in vars(carapace).items() if isinstance(v, types.ModuleType)}
