"""The adapter start-up mechanism: registry, secrets file, ``carapace channels``, and a
host that keeps serving when one adapter cannot start."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from carapace.channels import registry
from carapace.channels.cli import CliChannel
from carapace.channels.fake import FakeChannel, make_event
from carapace.cli import main
from carapace.config import Home, Settings
from carapace.errors import ConfigError
from carapace.host.host import Host, HostOptions
from carapace.host.pool import FakeBackend
from carapace.migrate.doctor import diagnose
from carapace.secretsfile import read_secrets_file, write_secret


def test_write_secret_is_private_atomic_and_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    write_secret(path, {"A_KEY": "one"})
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.write_text("# mine\nexport OTHER='x y'\nA_KEY=one\n")
    write_secret(path, {"A_KEY": "two", "NEW": "3"})
    assert path.read_text() == "# mine\nexport OTHER='x y'\nA_KEY=two\nNEW=3\n"
    write_secret(path, {"A_KEY": None})
    assert read_secrets_file(path) == {"OTHER": "x y", "NEW": "3"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_secret_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    write_secret(path, {"K": "v"})
    with pytest.raises(ConfigError, match="line break"):
        write_secret(path, {"K": "v\nEVIL=1"})
    with pytest.raises(ConfigError, match="bad secret name"):
        write_secret(path, {"K=X": "v"})
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        write_secret(path, {"K": "w"})
    assert path.read_text() == "K=v\n"
    link = tmp_path / "link.env"
    link.symlink_to(path)
    with pytest.raises(ConfigError):
        write_secret(link, {"K": "w"})
    assert path.read_text() == "K=v\n"


@pytest.fixture
def broken_adapter(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A registered adapter type whose module fails to build or start."""
    mod = types.ModuleType("carapace_test_broken")
    mod.SECRET_KEYS = ("BROKEN_TOKEN",)  # type: ignore[attr-defined]

    class Broken(FakeChannel):
        async def start(self, callbacks: Any) -> None:
            raise ConnectionError("the platform said no")

    def from_home(home: Home, secrets: Mapping[str, str], settings: Settings) -> Any:
        if secrets.get("BROKEN_TOKEN") == "explode":
            raise ConfigError("token file unreadable")
        return Broken(channel_type="broken") if secrets.get("BROKEN_TOKEN") else None

    async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
        if secrets.get("BROKEN_TOKEN") != "good":
            raise ConfigError("the platform rejected the token")
        return "@broken_bot"

    mod.from_home = from_home  # type: ignore[attr-defined]
    mod.verify = verify  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "carapace_test_broken", mod)
    monkeypatch.setitem(registry.ADAPTERS, "broken", "carapace_test_broken")
    yield mod


def test_build_adapters_skips_unconfigured_and_survives_a_broken_one(
    tmp_path: Path, broken_adapter: types.ModuleType
) -> None:
    home = Home(tmp_path / "h")
    built = registry.build_adapters(home, Settings(), environ={})
    assert [a.channel_type for a in built] == ["cli"]
    assert registry.read_states(home)["broken"]["state"] == "not configured"
    built = registry.build_adapters(home, Settings(), environ={"BROKEN_TOKEN": "explode"})
    assert [a.channel_type for a in built] == ["cli"]
    st = registry.read_states(home)["broken"]
    assert st["state"] == "failed" and st["detail"] == "token file unreadable"
    built = registry.build_adapters(home, Settings(), environ={"BROKEN_TOKEN": "t"})
    assert sorted(a.channel_type for a in built) == ["broken", "cli"]


def test_env_overrides_the_secrets_file_and_base_url_comes_from_toml(tmp_path: Path) -> None:
    home = Home(tmp_path)
    write_secret(tmp_path / "secrets.env", {"X_TOKEN": "file", "Y_TOKEN": "file"})
    got = registry.load_secrets(home, ("X_TOKEN", "Y_TOKEN", "Z"), {"Y_TOKEN": "env"})
    assert got == {"X_TOKEN": "file", "Y_TOKEN": "env"}
    (tmp_path / "carapace.toml").write_text(
        '[channels.telegram]\nbase_url = "http://127.0.0.1:9"\n'
    )
    s = home.load_settings()
    assert registry.base_url(s, "telegram", {}) == "http://127.0.0.1:9"
    assert (
        registry.base_url(s, "telegram", {"CARAPACE_TELEGRAM_BASE_URL": "http://x"}) == "http://x"
    )
    assert registry.base_url(s, "discord", {}) is None


def test_a_host_keeps_serving_when_one_adapter_fails_to_start(
    tmp_path: Path, broken_adapter: types.ModuleType
) -> None:
    home = Home(tmp_path / "h")
    fake = FakeChannel()
    broken = broken_adapter.from_home(home, {"BROKEN_TOKEN": "t"}, Settings())
    host = Host(home, channels=[fake, broken], backend=FakeBackend(),
                options=HostOptions(sockets=False, watch=False))  # fmt: skip

    async def go() -> Any:
        await host.start(background=False)
        try:
            assert "broken" not in host.adapters and "fake" in host.adapters
            return await host.route(make_event("hi"))
        finally:
            await host.stop()

    try:
        asyncio.run(go())
    finally:
        host.close()
    states = registry.read_states(home)
    assert states["broken"]["state"] == "failed"
    assert "the platform said no" in states["broken"]["detail"]
    assert states["fake"]["state"] == "stopped"
    codes = {f.code: f for f in diagnose(home).findings}
    assert codes["channel-failed"].level == "error"
    assert "broken" in codes["channel-failed"].subject


def test_channels_cli_add_list_remove(tmp_path: Path, broken_adapter: types.ModuleType) -> None:
    home = str(tmp_path / "h")
    r = CliRunner().invoke(main, ["channels", "list", "--home", home, "--json"], env={})
    assert r.exit_code == 0, r.output
    rows = {row["channel_type"]: row for row in json.loads(r.output)}
    assert rows["cli"]["configured"] and not rows["broken"]["configured"]
    assert rows["broken"]["missing"] == ["BROKEN_TOKEN"]
    r = CliRunner().invoke(main, ["channels", "add", "broken", "--home", home], input="bad\n")
    assert r.exit_code == 1 and "rejected the token" in r.output
    assert not (tmp_path / "h" / "secrets.env").exists()  # nothing written on a failed check
    r = CliRunner().invoke(main, ["channels", "add", "broken", "--home", home], input="good\n")
    assert r.exit_code == 0, r.output
    assert "@broken_bot" in r.output and "good" not in r.output.replace("@broken_bot", "")
    secrets = tmp_path / "h" / "secrets.env"
    assert read_secrets_file(secrets) == {"BROKEN_TOKEN": "good"}
    assert os.stat(secrets).st_mode & 0o777 == 0o600
    r = CliRunner().invoke(main, ["channels", "list", "--home", home])
    [line] = [x for x in r.output.splitlines() if x.startswith("broken")]
    assert "not configured" not in line and "configured" in line
    r = CliRunner().invoke(main, ["channels", "remove", "broken", "--home", home])
    assert r.exit_code == 0 and read_secrets_file(secrets) == {}
    r = CliRunner().invoke(main, ["channels", "add", "nope", "--home", home])
    assert r.exit_code == 1 and "no channel adapter 'nope'" in r.output


def test_build_host_starts_the_cli_channel_from_the_registry(tmp_path: Path) -> None:
    from carapace.host.client import build_host

    home = Home(tmp_path)
    host = build_host(home)
    try:
        assert isinstance(host.adapters["cli"], CliChannel)
    finally:
        host.close()


def test_doctor_names_chats_whose_adapter_has_no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carapace.testing.v1fixtures import make_nanoclaw_v2_home

    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    v2 = make_nanoclaw_v2_home(tmp_path / "nc")
    [f] = [f for f in diagnose(Home(v2.root)).findings if f.code == "channel-not-configured"]
    assert f.level == "warning" and "carapace channels add telegram" in f.message
    write_secret(v2.root / "secrets.env", {"TELEGRAM_BOT_TOKEN": "1:x"})
    assert not [f for f in diagnose(Home(v2.root)).findings if f.code == "channel-not-configured"]
