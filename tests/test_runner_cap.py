"""Issue 19: the default runner cap follows the machine's memory (formula in config.py)."""

from __future__ import annotations

from pathlib import Path

from carapace.config import Home, default_max_runners

GIB_KIB = 1024 * 1024


def test_half_of_memory_at_128_mib_per_runner_clamped() -> None:
    assert default_max_runners(4 * GIB_KIB) == 16
    assert default_max_runners(8 * GIB_KIB) == 32
    assert default_max_runners(23 * GIB_KIB) == 92
    assert default_max_runners(32 * GIB_KIB) == 128
    assert default_max_runners(256 * 1024) == 4  # never below 4
    assert default_max_runners(1024 * GIB_KIB) == 128  # never above 128


def test_carapace_toml_overrides_the_default(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("max_runners = 3\n")
    assert home.load_settings().max_runners == 3
    (tmp_path / "carapace.toml").write_text("")
    assert home.load_settings().max_runners == default_max_runners()
