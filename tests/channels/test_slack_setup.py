"""Setting Slack up as a person would: ``carapace channels add slack`` against the fake Slack,
the host started from the home (the registry builds the adapter), ``channels list`` and
``doctor`` when Slack rejects the tokens."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from click.testing import CliRunner

from carapace.bootstrap import init_home
from carapace.channels.slack_adapter import SlackChannel
from carapace.cli import main
from carapace.config import Home
from carapace.host.client import build_host
from carapace.host.host import HostOptions
from carapace.proxy.keys import read_secrets_file
from carapace.testing.fake_slack import FakeSlackThread


def _start_and_stop(home: Home) -> dict[str, object]:
    host = build_host(home)
    host.options = HostOptions(sockets=False, cleanup_orphans=False, watch=False)
    seen: dict[str, object] = {}

    async def go() -> None:
        await host.start(background=False)
        try:
            slack = host.adapters.get("slack")
            seen["status"] = getattr(slack, "status", None)
            seen["adapter"] = type(slack).__name__ if slack else None
        finally:
            await host.stop()

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        host.close()
    return seen


def test_add_slack_then_the_host_serves_it_and_a_revoked_token_is_reported(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    with FakeSlackThread() as slack:
        env = {"SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_APP_TOKEN": slack.fake.app_token}
        r = CliRunner().invoke(main, ["channels", "add", "slack", "--home", str(home.root),
                                      "--base-url", slack.api_url], env=env)  # fmt: skip
        assert r.exit_code == 1 and "rejected the bot token: invalid_auth" in r.output
        assert "SLACK_BOT_TOKEN" not in read_secrets_file(home.root / "secrets.env")
        env["SLACK_BOT_TOKEN"] = slack.fake.bot_token
        r = CliRunner().invoke(main, ["channels", "add", "slack", "--home", str(home.root),
                                      "--base-url", slack.api_url], env=env)  # fmt: skip
        assert r.exit_code == 0, r.output
        assert "verified @carapace (Fake Team)" in r.output and slack.fake.bot_token not in r.output
        stored = read_secrets_file(home.root / "secrets.env")
        assert stored == {"SLACK_BOT_TOKEN": slack.fake.bot_token,
                          "SLACK_APP_TOKEN": slack.fake.app_token}  # fmt: skip
        assert os.stat(home.root / "secrets.env").st_mode & 0o777 == 0o600
        home.config_file.write_text(f'[channels.slack]\nbase_url = "{slack.api_url}"\n')
        # the host built from the home starts Slack and connects
        seen = _start_and_stop(home)
        assert seen == {"status": "connected", "adapter": SlackChannel.__name__}
        assert slack.fake.connections == 1
        r = CliRunner().invoke(main, ["channels", "list", "--home", str(home.root), "--json"])
        [row] = [x for x in json.loads(r.output) if x["channel_type"] == "slack"]
        assert row["configured"] and row["state"] == "stopped"
        # the token is revoked: the host still starts, Slack is failed, doctor says so
        slack.fake.revoke()
        seen = _start_and_stop(home)
        assert seen["adapter"] is None
        r = CliRunner().invoke(main, ["channels", "list", "--home", str(home.root), "--json"])
        [row] = [x for x in json.loads(r.output) if x["channel_type"] == "slack"]
        assert row["state"] == "failed" and "token_revoked" in row["detail"]
        r = CliRunner().invoke(main, ["doctor", "--home", str(home.root), "--json"])
        findings = [f for f in json.loads(r.output)["findings"] if f["code"] == "channel-failed"]
        assert findings and findings[0]["level"] == "error"
        assert "token_revoked" in findings[0]["message"] and "slack" in findings[0]["subject"]


def test_a_home_without_slack_never_loads_the_slack_libraries(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom carapace.config import Home, Settings\n"
            "from carapace.channels.registry import build_adapters\n"
            "from pathlib import Path\n"
            f"built = build_adapters(Home(Path({str(tmp_path)!r})), Settings(), environ={{}})\n"
            "print([a.channel_type for a in built], 'slack_bolt' in sys.modules, "
            "'aiohttp' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["['cli']", "False", "False"], out.stderr


def test_add_slack_in_events_mode_then_back_to_socket_mode(tmp_path: Path) -> None:
    """``--mode events``: the bot token is checked with Slack, the signing secret's shape
    (Slack's first signed request proves the rest); the app token of an earlier Socket Mode
    set-up goes, so the host takes the mode added last. ``channels remove`` removes both
    modes' secrets."""
    from carapace.testing.fake_slack import SIGNING_SECRET

    home = Home(tmp_path / "home")
    init_home(home)
    run = CliRunner().invoke
    with FakeSlackThread() as slack:
        base = ["--home", str(home.root), "--base-url", slack.api_url]
        socket_env = {"SLACK_BOT_TOKEN": slack.fake.bot_token,
                      "SLACK_APP_TOKEN": slack.fake.app_token}  # fmt: skip
        assert run(main, ["channels", "add", "slack", *base], env=socket_env).exit_code == 0
        env = {"SLACK_BOT_TOKEN": slack.fake.bot_token, "SLACK_SIGNING_SECRET": "not-hex"}
        r = run(main, ["channels", "add", "slack", "--mode", "events", *base], env=env)
        assert (
            r.exit_code == 1 and "SLACK_SIGNING_SECRET must be the app's signing secret" in r.output
        )
        r = run(main, ["channels", "add", "slack", "--mode", "sockets", *base], env=env)
        assert (
            r.exit_code == 1
            and "slack has no mode 'sockets' (its modes: events, socket)" in r.output
        )
        env["SLACK_SIGNING_SECRET"] = SIGNING_SECRET
        r = run(main, ["channels", "add", "slack", "--mode", "events", *base], env=env)
        assert r.exit_code == 0, r.output
        assert "events over the web server at /slack/events" in r.output
        assert read_secrets_file(home.root / "secrets.env") == {
            "SLACK_BOT_TOKEN": slack.fake.bot_token,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        }
        home.config_file.write_text(f'[channels.slack]\nbase_url = "{slack.api_url}"\n')
        seen = _start_and_stop(home)
        assert seen["adapter"] == SlackChannel.__name__
        assert str(seen["status"]).startswith("connected (events over the web server")
        assert slack.fake.connections == 0  # no Socket Mode connection in events mode
        r = run(main, ["channels", "list", "--home", str(home.root), "--json"])
        [row] = [x for x in json.loads(r.output) if x["channel_type"] == "slack"]
        assert row["configured"] and row["missing"] == []
        # back to Socket Mode: the signing secret goes
        assert run(main, ["channels", "add", "slack", *base], env=socket_env).exit_code == 0
        assert set(read_secrets_file(home.root / "secrets.env")) == {
            "SLACK_BOT_TOKEN",
            "SLACK_APP_TOKEN",
        }
        r = run(main, ["channels", "remove", "slack", "--home", str(home.root)])
        assert r.exit_code == 0 and read_secrets_file(home.root / "secrets.env") == {}


def test_events_mode_without_the_web_server_is_a_failed_channel(tmp_path: Path) -> None:
    from carapace.testing.fake_slack import SIGNING_SECRET
    from carapace.web.server import start_web

    home = Home(tmp_path / "home")
    init_home(home)
    with FakeSlackThread() as slack:
        (home.root / "secrets.env").write_text(
            f"SLACK_BOT_TOKEN={slack.fake.bot_token}\nSLACK_SIGNING_SECRET={SIGNING_SECRET}\n"
        )
        (home.root / "secrets.env").chmod(0o600)
        home.config_file.write_text(f'[channels.slack]\nbase_url = "{slack.api_url}"\n')
        host = build_host(home)
        host.options = HostOptions(sockets=False, cleanup_orphans=False, watch=False)

        async def go() -> object:
            await host.start(background=False)
            try:
                assert await start_web(host) is None
                r = CliRunner().invoke(main, ["channels", "list", "--home", str(home.root),
                                              "--json"])  # fmt: skip
                return [x for x in json.loads(r.output) if x["channel_type"] == "slack"]
            finally:
                await host.stop()

        try:
            [row] = asyncio.run(asyncio.wait_for(go(), 60))  # type: ignore[misc]
        finally:
            host.close()
    assert row["state"] == "failed" and "[web] enabled = true" in row["detail"]
