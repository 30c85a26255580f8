"""Runner tests: the runner's temp folder (``private_tmp_dir``, under ``TMPDIR``) of a
runner built in the test's own process lands in the test's folder, not in ``/tmp`` (where
each one was left behind)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _runner_tmpdir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    tmp = tmp_path_factory.mktemp("runner-tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp
