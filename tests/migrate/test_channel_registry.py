"""migrate-v1 and doctor name only the channel adapters that exist (the channel registry)
and warn about chats on channels with none (issue 18 item 4)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.channels import registry
from carapace.config import Home
from carapace.migrate.doctor import diagnose
from carapace.migrate.importer import migrate_v1
from carapace.testing.v1fixtures import add_group, make_nanoclaw_v2_home, make_v1_tree


def _unknown(root: Path) -> list[str]:
    return [f"{f.subject} {f.message}" for f in diagnose(Home(root)).findings
            if f.code == "unknown-channel"]  # fmt: skip


def test_only_the_cli_adapter_exists_today() -> None:
    assert registry.adapter_types() == ("cli",)


def test_doctor_warns_about_a_telegram_home(tmp_path: Path) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nc")  # one telegram chat
    [msg] = _unknown(v2.root)
    assert "'telegram'" in msg and "no telegram adapter (adapters: cli)" in msg
    assert "webhook" not in msg and "web " not in msg


def test_migrate_v1_reports_telegram_chats(tmp_path: Path) -> None:
    tree = make_v1_tree(tmp_path / "v1", "final")
    c = tree.db()
    add_group(c, "tg:42", "Me", "main", requires_trigger=0, is_main=1)
    c.close()
    report = migrate_v1(tree.root, Home(tmp_path / "home"),
                        now=datetime(2026, 3, 1, tzinfo=UTC))  # fmt: skip
    [item] = [a for a in report.attention if "telegram" in a.problem]
    assert "no telegram adapter (only cli)" in item.problem
    assert "webhook" not in item.problem + item.action


def test_a_new_adapter_appears_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = make_nanoclaw_v2_home(tmp_path / "nc")
    monkeypatch.setitem(registry.ADAPTERS, "telegram", registry.ADAPTERS["cli"])
    assert _unknown(v2.root) == []
