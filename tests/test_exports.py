"""The public surface stays small, sorted and complete (httpx's habit)."""

from __future__ import annotations

import subprocess
import sys

import carapace


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert carapace.__all__ == sorted(carapace.__all__)
    for name in carapace.__all__:
        assert getattr(carapace, name) is not None, name


def test_every_public_name_is_listed() -> None:
    public = {n for n in vars(carapace) if not n.startswith("_")} - {"annotations", "importlib"}
    public -= {"TYPE_CHECKING", "Any"}
    modules = {n for n, v in vars(carapace).items() if type(v).__name__ == "module"}
    assert public - modules <= set(carapace.__all__)


def test_import_is_cheap() -> None:
    """The runner imports ``carapace``; that must not pull in the host."""
    code = "import sys, carapace; print('carapace.host.host' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
