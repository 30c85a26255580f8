"""Per-group agent settings (container.json ``settings``), the bash policy and its refusals,
and the composed prompt of a NanoClaw group folder."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from carapace.runner.config import RunnerConfig
from carapace.runner.prompt import compose_system_prompt
from carapace.runner.settings import (
    WORKSPACE_TOOL_NAMES,
    AgentSettings,
    is_sandboxed,
    validate_settings,
)
from carapace.runner.setup import build_workspace, provider_config
from carapace.runner.tools import ToolBox, ToolContext
from carapace.runner.workspace_specs import BASH_DISABLED, BASH_NOT_SANDBOXED, TOOL_DISABLED
from carapace.testing.sessions import make_agent_dir, make_session


def test_defaults() -> None:
    s = AgentSettings.parse({})
    assert s == AgentSettings()
    assert (s.bash, s.web, s.max_tokens, s.max_tool_rounds) == ("sandboxed", True, 4096, 25)
    assert s.tools == frozenset(WORKSPACE_TOOL_NAMES) and s.context_limit_chars == 400_000


def test_values_and_aliases() -> None:
    s = AgentSettings.parse({
        "max_tokens": 1000, "base_url": "http://127.0.0.1:9/v1", "context_limit_tokens": 2000,
        "tools": ["read_file", "bash"], "bash": "auto", "web": False, "max_tool_rounds": 3,
        "bash_timeout_s": 5, "sandbox": "bwrap",
    })  # fmt: skip
    assert (s.max_tokens, s.base_url, s.context_limit_chars) == (
        1000,
        "http://127.0.0.1:9/v1",
        8000,
    )
    assert s.tools == {"read_file", "bash"} and s.bash == "sandboxed" and s.web is False
    assert (s.max_tool_rounds, s.bash_timeout_s) == (3, 5.0)
    assert AgentSettings.parse({"context_limit_chars": 900}).context_limit_chars == 900
    assert AgentSettings.parse({"bash": True}).bash == "allowed"
    assert AgentSettings.parse({"bash": False}).bash == "off"
    assert AgentSettings.parse({"tools": "none"}).tools == frozenset()


def test_bad_values_are_logged_and_defaulted(caplog: pytest.LogCaptureFixture) -> None:
    bad = {"max_tokens": -1, "bash": "maybe", "web": "yes", "tools": ["rm"], "base_url": "ftp://x"}
    with caplog.at_level(logging.WARNING):
        assert AgentSettings.parse(bad) == AgentSettings()
    problems = validate_settings(bad)
    assert len(problems) == 5 and any("bash must be" in p for p in problems)
    assert validate_settings({"bash": "allowed", "runner_backend": "bwrap"}) == []


@pytest.mark.parametrize(
    ("value", "sandboxed"),
    [(None, False), ("", False), ("none", False), ("subprocess", False), ("bwrap", True)],
)
def test_sandbox_env(value: str | None, sandboxed: bool) -> None:
    env = {} if value is None else {"CARAPACE_SANDBOX": value}
    assert is_sandboxed(env) is sandboxed


@pytest.mark.parametrize(
    ("bash", "sandboxed", "mode"),
    [
        ("off", True, "off"),
        ("sandboxed", False, "off"),
        ("sandboxed", True, "sandboxed"),
        ("allowed", False, "allowed"),
    ],
)
def test_bash_mode(bash: str, sandboxed: bool, mode: str) -> None:
    assert AgentSettings.parse({"bash": bash}).bash_mode(sandboxed)[0] == mode


def config(tmp_path: Path, data: dict[str, Any], env: dict[str, str]) -> RunnerConfig:
    paths = make_session(tmp_path)
    agent_dir = make_agent_dir(tmp_path, config=data)
    return RunnerConfig.load(paths.root, agent_dir, environ=env)


def test_runner_config_reads_container_json(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        {"provider": "claude", "model": "m1", "settings": {"max_tokens": 77, "max_tool_rounds": 4,
                                                          "base_url": "http://127.0.0.1:1"}},
        {"CARAPACE_SANDBOX": "bwrap"},
    )  # fmt: skip
    assert (cfg.provider, cfg.model, cfg.max_tool_rounds, cfg.sandboxed) == (
        "claude",  # NanoClaw's name: the Claude Agent SDK provider
        "m1",
        4,
        True,
    )
    pc = provider_config(cfg)
    assert (pc.max_tokens, pc.base_url, pc.model) == (77, "http://127.0.0.1:1", "m1")


def bash_result(tmp_path: Path, settings: dict[str, Any], env: dict[str, str]) -> tuple[str, bool]:
    cfg = config(tmp_path, {"settings": settings}, env)
    ws = build_workspace(cfg)
    assert ws is not None
    ctx = ToolContext(config=cfg, inbound=None, outbound=_NoState(), now=None,  # type: ignore[arg-type]
                      heartbeat=lambda: None, wait=lambda t: None, should_stop=lambda: False,
                      workspace=ws)  # fmt: skip
    result = ToolBox(ctx, ws).call("bash", {"command": "echo hello"})
    return result.content, result.is_error


class _NoState:
    def set_tool(self, name: str | None, timeout_ms: int | None = None) -> None:
        pass


def test_bash_refused_without_permission_or_sandbox(tmp_path: Path) -> None:
    assert bash_result(tmp_path / "a", {"bash": "off"}, {}) == (BASH_DISABLED, True)
    assert bash_result(tmp_path / "b", {"bash": "sandboxed"}, {}) == (BASH_NOT_SANDBOXED, True)
    assert bash_result(tmp_path / "d", {}, {}) == (BASH_NOT_SANDBOXED, True)  # the default
    text, err = bash_result(tmp_path / "c", {"bash": "allowed", "tools": ["read_file"]}, {})
    assert err and text == TOOL_DISABLED.format(name="bash")
    assert "bwrap" in BASH_NOT_SANDBOXED and 'bash: "allowed"' in BASH_DISABLED


def test_bash_runs_when_sandboxed_or_allowed(tmp_path: Path) -> None:
    text, err = bash_result(tmp_path / "a", {"bash": "auto"}, {"CARAPACE_SANDBOX": "bwrap"})
    assert not err and "hello" in text
    text, err = bash_result(tmp_path / "b", {"bash": "allowed"}, {"CARAPACE_SANDBOX": "none"})
    assert not err and "hello" in text


def test_tools_setting_limits_the_offered_tools(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"settings": {"tools": ["read_file", "grep"], "web": True}}, {})
    ws = build_workspace(cfg)
    assert ws is not None
    assert {t.name for t in ws.tools()} == {"read_file", "grep"}
    assert ws.call("web_fetch", {"url": "http://127.0.0.1/"}).content == TOOL_DISABLED.format(
        name="web_fetch"
    )


def test_nanoclaw_group_folder_in_the_prompt(tmp_path: Path) -> None:
    group = tmp_path / "groups" / "team"
    (group / ".claude-fragments").mkdir(parents=True)
    (tmp_path / "groups" / "global").mkdir()
    (group / "CLAUDE.md").write_text(
        "@./.claude-shared.md\n@./.claude-fragments/tools.md\n\n# Team rules\nBe nice.\n"
    )
    (group / ".claude-shared.md").symlink_to("/nonexistent/app/CLAUDE.md")
    (group / ".claude-fragments" / "tools.md").write_text("Fragment: use the wiki tool.")
    (group / "CLAUDE.local.md").write_text("- Bob likes tea.\n@/etc/passwd\n")
    (tmp_path / "groups" / "global" / "CLAUDE.md").write_text("Global fact: HQ is in Oslo.")
    prompt = compose_system_prompt(group, [], "Andy", settings={"bash": "allowed"})
    assert "# You are Andy" in prompt
    assert "Be nice." in prompt and "Fragment: use the wiki tool." in prompt
    assert "Bob likes tea." in prompt and "Global fact: HQ is in Oslo." in prompt
    assert "@./.claude-shared.md" not in prompt and "root:" not in prompt
    assert "## Your workspace" in prompt and "`bash` runs shell commands" in prompt
    off = compose_system_prompt(group, [], "Andy", settings={}, sandboxed=False)
    assert "Shell commands (`bash`) are disabled" in off


def test_admin_settings_update_merges_and_validates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = [sys.executable, "-m", "carapace"]
    subprocess.run([*run, "init", "--home", str(home)], check=True, capture_output=True)
    update = [*run, "admin", "--home", str(home), "--json", "groups", "config", "update", "main"]
    r = subprocess.run([*update, "--settings", '{"bash": "allowed", "web": false}'],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*update, "--settings", '{"web": null, "max_tokens": 99}'],
                       capture_output=True, text=True)  # fmt: skip
    assert json.loads(r.stdout)["settings"] == {"bash": "allowed", "max_tokens": 99}
    r = subprocess.run([*update, "--settings", '{"bash": "maybe"}'], capture_output=True, text=True)
    assert r.returncode != 0 and "bash must be" in r.stdout + r.stderr
