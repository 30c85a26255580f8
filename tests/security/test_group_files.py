"""NanoClaw v2's file roles (issue 18 item 2) and the host's writes into the agent's folder.

carapace kept the operator's instructions in ``CLAUDE.md`` and shared memory in
``groups/global``; NanoClaw's start-up regenerates ``CLAUDE.md`` and deletes
``groups/global``, so a home given back to NanoClaw lost both. Now the host composes
``CLAUDE.md``, the group's own text lives in ``CLAUDE.local.md`` and the shared memory is
copied into each group's ``.claude-fragments/shared.md``. The folder is the agent's: the
host's composition never follows a link the agent planted there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from groupfile_helpers import bash_script, make_home, needs_bwrap, turn

from carapace.host.groupfiles import COMPOSED_MARKER, FRAGMENTS, SHARED_FRAGMENT
from carapace.migrate.doctor import diagnose
from carapace.runner.prompt import compose_system_prompt

NANOCLAW_COMPOSED = "@./.claude-shared.md\n@./.claude-fragments/mcp-cli.instructions.md\n"


def _prompt(agent: Path) -> str:
    return compose_system_prompt(agent, [], "Test")


@needs_bwrap
def test_a_home_round_trips_through_nanoclaw_without_loss(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    agent = home.group_dir("main")
    (agent / "CLAUDE.local.md").unlink(missing_ok=True)
    (agent / "CLAUDE.md").write_text("OPERATOR-RULE-41: answer in French.\n")
    (agent / "CLAUDE.local.md").write_text("AGENT-NOTE: Bob likes tea.\n")
    (home.groups_dir / "global").mkdir()
    (home.groups_dir / "global" / "CLAUDE.md").write_text("SHARED-FACT: HQ is in Oslo.\n")
    codes = {(f.code, f.subject, f.level) for f in diagnose(home).findings}
    assert ("nanoclaw-rewrites", "groups/main/CLAUDE.md", "warning") in codes
    bash_script(home, {"hi": "echo hello"})
    assert "hello" in turn(home, "hi")
    local = (agent / "CLAUDE.local.md").read_text()
    assert "OPERATOR-RULE-41" in local and "AGENT-NOTE" in local
    assert (agent / "CLAUDE.md").read_text().startswith(COMPOSED_MARKER)
    assert "SHARED-FACT" in (agent / FRAGMENTS / SHARED_FRAGMENT).read_text()
    findings = {(f.subject, f.level) for f in diagnose(home).findings
                if f.code == "nanoclaw-rewrites"}  # fmt: skip
    assert ("groups/main/CLAUDE.md", "info") in findings
    assert ("groups/global/", "info") in findings
    # NanoClaw runs the home: it regenerates CLAUDE.md and deletes groups/global.
    (agent / "CLAUDE.md").write_text(NANOCLAW_COMPOSED)
    shutil.rmtree(home.groups_dir / "global")
    assert "hello" in turn(home, "hi")  # carapace again
    assert "SHARED-FACT" in (home.groups_dir / "global" / "CLAUDE.md").read_text()
    prompt = _prompt(agent)
    for marker in ("OPERATOR-RULE-41", "AGENT-NOTE", "SHARED-FACT"):
        assert prompt.count(marker) == 1, marker
    assert ".claude-shared.md" not in (agent / "CLAUDE.local.md").read_text()


@needs_bwrap
def test_host_composition_follows_no_link_the_agent_planted(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    agent = home.group_dir("main")
    (home.groups_dir / "global").mkdir()
    (home.groups_dir / "global" / "CLAUDE.md").write_text("SHARED-FACT\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM-UNCHANGED\n")
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE-KEY-MATERIAL\n")
    rel = os.path.relpath
    bash_script(home, {
        "plant": f"rm -f CLAUDE.local.md; ln -sfn {rel(secret, agent)} CLAUDE.local.md; "
                 f"rm -rf {FRAGMENTS} 2>/dev/null; ln -sfn {rel(outside, agent)} {FRAGMENTS}; "
                 "ls -la",
        "look": "cat CLAUDE.md CLAUDE.local.md 2>&1; echo done",
    })  # fmt: skip
    turn(home, "plant")
    assert os.path.islink(agent / "CLAUDE.local.md")
    # The host's next composition: no write through the fragments link, no read of the key.
    (agent / "CLAUDE.md").unlink()
    os.symlink(rel(victim, agent), agent / "CLAUDE.md")
    out = turn(home, "look")
    assert "done" in out
    assert victim.read_text() == "VICTIM-UNCHANGED\n"
    assert list(outside.iterdir()) == []
    assert secret.read_text() == "PRIVATE-KEY-MATERIAL\n"
    assert not os.path.islink(agent / "CLAUDE.md")  # replaced, not followed
    assert "PRIVATE-KEY-MATERIAL" not in _prompt(agent)  # `groups prompt`, host side
