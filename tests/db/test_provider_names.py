"""Provider names are stored as NanoClaw v2 names them: ``claude`` is NanoClaw's Claude Agent
SDK provider, and carapace's ``claude`` is the same provider (``claude-agent-sdk`` is an
accepted spelling); ``anthropic`` is carapace's Messages API loop, which NanoClaw has not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from carapace.db import groups
from carapace.db.central import open_central
from carapace.errors import ProviderError
from carapace.runner.config import RunnerConfig
from carapace.runner.providers import ProviderConfig, create_provider, unavailable_reason


def test_names_are_stored_as_nanoclaw_names_them(tmp_path: Path) -> None:
    db = open_central(tmp_path / "v2.db")
    ag = groups.create_agent_group(db, "Main", "main", agent_provider="claude-agent-sdk")
    assert ag.agent_provider == "claude"
    cfg = groups.update_container_config(db, ag.id, {"provider": "Claude-Agent-SDK"})
    assert cfg.provider == "claude"
    assert groups.update_container_config(db, ag.id, {"provider": "anthropic"}).provider == (
        "anthropic"
    )
    groups.update_agent_group(db, ag.id, agent_provider="Anthropic")
    rows = db.execute(
        "SELECT g.agent_provider, c.provider FROM agent_groups g "
        "JOIN container_configs c ON c.agent_group_id = g.id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [("anthropic", "anthropic")]


@pytest.mark.parametrize(
    ("written", "provider"),
    [("claude", "claude"), ("Claude", "claude"), ("claude-agent-sdk", "claude"),
     ("anthropic", "anthropic"), ("openai", "openai")],
)  # fmt: skip
def test_runner_reads_each_name(tmp_path: Path, written: str, provider: str) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "container.json").write_text(f'{{"provider": "{written}"}}', encoding="utf-8")
    cfg = RunnerConfig.load(tmp_path / "sess", agent, environ={})
    assert cfg.provider == provider


def test_claude_without_the_sdk_is_a_clear_error_never_another_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the claude extra missing, ``claude`` is refused with the reason (runner start,
    doctor); it is not silently served by the anthropic Messages loop."""
    real = importlib.util.find_spec

    def no_sdk(name: str, *args: object) -> object:
        return None if name == "claude_agent_sdk" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_sdk)
    for name in ("claude", "claude-agent-sdk"):
        why = unavailable_reason(name)
        assert why is not None and "pip install 'carapace[claude]'" in why
    assert unavailable_reason("mock") is None
    assert unavailable_reason("anthropic") is None  # installed in dev
    import sys

    monkeypatch.setitem(sys.modules, "claude_agent_sdk", None)  # import fails
    monkeypatch.delitem(sys.modules, "carapace.runner.providers.claude_sdk", raising=False)
    with pytest.raises(ProviderError, match=r"carapace\[claude\]"):
        create_provider(ProviderConfig(name="claude"))


def test_host_start_names_groups_whose_provider_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from carapace.host.groupfiles import log_unavailable_providers

    db = open_central(tmp_path / "v2.db")
    ag = groups.create_agent_group(db, "Main", "main")
    groups.update_container_config(db, ag.id, {"provider": "claude"})
    other = groups.create_agent_group(db, "Other", "other")
    groups.update_container_config(db, other.id, {"provider": "mock"})
    assert log_unavailable_providers(db) == 0
    real = importlib.util.find_spec

    def no_sdk(name: str, *args: object) -> object:
        return None if name == "claude_agent_sdk" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_sdk)
    with caplog.at_level("ERROR"):
        assert log_unavailable_providers(db) == 1
    assert "agent group main: provider claude cannot run here" in caplog.text
    assert "carapace[claude]" in caplog.text


def test_claude_without_its_bundled_cli_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
    import importlib.machinery

    fake = tmp_path / "claude_agent_sdk"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    real = importlib.util.find_spec

    def elsewhere(name: str, *args: object) -> object:
        if name == "claude_agent_sdk":
            return importlib.machinery.ModuleSpec(name, None, origin=str(fake / "__init__.py"))
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", elsewhere)
    why = unavailable_reason("claude")
    assert why is not None and "bundled Claude Code CLI is missing" in why
