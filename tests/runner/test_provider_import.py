"""A provider's SDK is imported without the packages it only offers (``import_lean``):
the runner's start does not pay for aiohttp, and an SDK that truly needs one still loads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace.runner import providers
from carapace.runner.providers import import_lean
from carapace.testing.runner_proc import run_env

OPTIONAL = """
try:
    import {heavy}
    HAS_HEAVY = True
except ImportError:
    HAS_HEAVY = False
"""
NEEDY = """
from . import part
import {heavy}
VALUE = {heavy}.VALUE + part.PART
"""


@pytest.fixture
def pkgs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
         ) -> Iterator[str]:  # fmt: skip
    """A fake optional package (``heavy_<test>``) and two SDKs beside it: one that only
    offers it, one that needs it. Yields the heavy package's name."""
    tag = request.node.name.replace("[", "_").replace("]", "_")
    heavy = f"heavy_{tag}"
    (tmp_path / f"{heavy}.py").write_text("VALUE = 40\n")
    for name, body in ((f"offers_{tag}", OPTIONAL), (f"needs_{tag}", NEEDY)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(textwrap.dedent(body.format(heavy=heavy)))
        (tmp_path / name / "part.py").write_text(
            f"PART = 2\nwith open({str(tmp_path / name / 'loads')!r}, 'a') as f:\n    f.write('x')\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(providers, "UNUSED_BY_SDKS", (heavy,))
    yield tag
    for mod in [m for m in sys.modules if m.split(".")[0].endswith(tag)]:
        del sys.modules[mod]


def test_an_sdk_that_only_offers_the_package_goes_without_it(pkgs: str) -> None:
    mod = import_lean(f"offers_{pkgs}")
    assert mod.HAS_HEAVY is False
    assert f"heavy_{pkgs}" not in sys.modules  # never imported
    heavy = __import__(f"heavy_{pkgs}")  # and importable again afterwards
    assert heavy.VALUE == 40


def test_an_sdk_that_needs_the_package_is_imported_again_with_it(pkgs: str) -> None:
    mod = import_lean(f"needs_{pkgs}")
    assert mod.VALUE == 42
    assert sys.modules[f"heavy_{pkgs}"] is not None
    # what the first attempt had imported was dropped: its part module was run again
    assert (Path(mod.__file__).parent / "loads").read_text() == "xx"


def test_a_missing_sdk_is_still_an_import_error(pkgs: str) -> None:
    with pytest.raises(ImportError) as info:
        import_lean(f"absent_{pkgs}")
    assert info.value.name == f"absent_{pkgs}"
    assert f"heavy_{pkgs}" not in sys.modules  # the block did not outlive the call


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_real_sdk_loads_without_aiohttp(provider: str, tmp_path: Path) -> None:
    """In a fresh interpreter, as a runner: the provider's module and its SDK load, aiohttp
    (installed: the host needs it) is not imported, and can be imported afterwards."""
    code = textwrap.dedent(f"""
        import sys
        from carapace.runner.providers import import_lean
        mod = import_lean("carapace.runner.providers.{provider}_provider")
        print("sdk" if "{provider}" in sys.modules else "no sdk")
        print("aiohttp" if "aiohttp" in sys.modules else "no aiohttp")
        import aiohttp
        print("importable")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=run_env(), cwd=tmp_path, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sdk", "no", "aiohttp", "importable"]
