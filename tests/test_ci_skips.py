"""Under CI=true a bubblewrap skip fails the run; elsewhere it stays a skip with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")
TEST = """
import pytest

@pytest.mark.skipif(True, reason="bubblewrap unusable: bwrap cannot create a sandbox here")
def test_sandboxed():
    pass

@pytest.mark.skipif(True, reason="root can write anywhere")
def test_other():
    pass
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_bwrap_skip_fails_only_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_x=TEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    if ci:
        result.assert_outcomes(errors=1, skipped=1)
        result.stdout.fnmatch_lines(["*CI=true and this sandbox test was skipped*"])
    else:
        result.assert_outcomes(skipped=2)
