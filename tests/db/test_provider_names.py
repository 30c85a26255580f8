"""Provider names are stored as NanoClaw v2 names them (its runner registers ``claude`` and
``mock`` and refuses ``anthropic``); carapace's runner still reads its own older values."""

from __future__ import annotations

from pathlib import Path

import pytest

from carapace.db import groups
from carapace.db.central import open_central
from carapace.runner.config import RunnerConfig


def test_anthropic_is_stored_as_claude(tmp_path: Path) -> None:
    db = open_central(tmp_path / "v2.db")
    ag = groups.create_agent_group(db, "Main", "main", agent_provider="anthropic")
    assert ag.agent_provider == "claude"
    groups.update_agent_group(db, ag.id, agent_provider="Anthropic")
    cfg = groups.update_container_config(db, ag.id, {"provider": "anthropic"})
    assert cfg.provider == "claude"
    rows = db.execute(
        "SELECT g.agent_provider, c.provider FROM agent_groups g "
        "JOIN container_configs c ON c.agent_group_id = g.id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [("claude", "claude")]
    # names NanoClaw does not know are kept as given
    assert groups.update_container_config(db, ag.id, {"provider": "openai"}).provider == "openai"
    assert groups.update_container_config(db, ag.id, {"provider": "mock"}).provider == "mock"


@pytest.mark.parametrize("written", ["claude", "anthropic", "Claude"])
def test_runner_reads_both_names(tmp_path: Path, written: str) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "container.json").write_text(f'{{"provider": "{written}"}}', encoding="utf-8")
    cfg = RunnerConfig.load(tmp_path / "sess", agent, environ={})
    assert cfg.provider == "anthropic"
