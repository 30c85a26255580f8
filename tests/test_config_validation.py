"""Wrong types and non-UTF-8 in carapace.toml are one clear ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from carapace.config import Home
from carapace.errors import ConfigError


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        (b'max_runners = "eight"\n', "max_runners must be a whole number"),
        (b'runner_idle_exit_s = "soon"\n', "runner_idle_exit_s must be a number"),
        (b"max_runners = 0\n", "max_runners must be between"),
        (b"max_tries = true\n", "max_tries must be a whole number"),
        (b"timezone = 5\n", "timezone must be a string"),
        (b"runner_idle_exit_s = -1\n", "runner_idle_exit_s must be between"),
        (b'timezone = "\xff\xfe"\n', "cannot read"),
        (b'timezone = "Mars/Olympus"\n', "timezone is not a known time zone"),
    ],
)
def test_bad_setting_is_one_clear_error(tmp_path: Path, toml: bytes, words: str) -> None:
    home = Home(tmp_path)
    home.config_file.write_bytes(toml)
    with pytest.raises(ConfigError, match=words) as info:
        home.load_settings()
    assert "\n" not in str(info.value)


def test_good_settings_load(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text('max_runners = 3\nrunner_idle_exit_s = 2.5\nlog_format = "json"\n')
    s = home.load_settings()
    assert (s.max_runners, s.runner_idle_exit_s, s.extra) == (3, 2.5, {"log_format": "json"})


def test_runner_backends_known_to_config_are_the_sandbox_ones() -> None:
    from carapace.config import RUNNER_BACKENDS
    from carapace.sandbox.bwrap import BACKENDS

    assert set(RUNNER_BACKENDS) == {"auto", *BACKENDS}
