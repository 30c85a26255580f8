"""``carapace migrate-v1`` on the command line: dry run writes nothing, JSON, exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner

from carapace.cli import main
from carapace.testing.v1fixtures import (
    V1Tree,
    add_group,
    add_message,
    add_task,
    make_v1_tree,
)


def tree_hash(root: Path) -> str:
    """Names, sizes and contents of every file under ``root`` (missing root hashes too)."""
    h = hashlib.sha256()
    if root.exists():
        for p in sorted(root.rglob("*")):
            h.update(str(p.relative_to(root)).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def populated(tmp_path: Path) -> V1Tree:
    tree = make_v1_tree(tmp_path / "v1")
    c = tree.db()
    add_group(c, "tg:42", "Me", "main", requires_trigger=0, is_main=1)
    add_group(c, "120363001@g.us", "Family", "whatsapp_family")
    add_task(c, "task-1", "main", "tg:42")
    add_message(c, "tg:42", "m1", "hi")
    c.close()
    tree.group_file("main", "CLAUDE.md", "# main")
    tree.transcript("main", "abc")
    return tree


def test_dry_run_writes_nothing_to_a_new_home(tmp_path: Path) -> None:
    tree = populated(tmp_path)
    home = tmp_path / "home"
    v1_before = tree_hash(tree.root)
    res = CliRunner().invoke(main, ["migrate-v1", "--home", str(home), "--dry-run", "--json",
                                    str(tree.root)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["dry_run"] is True and data["ok"] is True
    assert data["summary"]["registered_groups"] == {"imported": 2}
    assert data["summary"]["scheduled_tasks"] == {"imported": 1}
    assert not home.exists()
    assert tree_hash(tree.root) == v1_before


def test_dry_run_writes_nothing_to_an_existing_home(tmp_path: Path) -> None:
    tree = populated(tmp_path)
    home = tmp_path / "home"
    runner = CliRunner()
    assert runner.invoke(main, ["init", "--home", str(home)]).exit_code == 0
    c = tree.db()
    add_group(c, "tg:7", "Seven", "seven")
    c.close()
    before = tree_hash(home)
    res = runner.invoke(main, ["migrate-v1", "--home", str(home), "--dry-run", str(tree.root)])
    assert res.exit_code == 0, res.output
    assert "DRY RUN" in res.output and "seven" in res.output
    assert tree_hash(home) == before


def test_real_run_then_rerun_json(tmp_path: Path) -> None:
    tree = populated(tmp_path)
    home = tmp_path / "home"
    runner = CliRunner()
    first = runner.invoke(main, ["migrate-v1", "--home", str(home), "--json", str(tree.root)])
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["summary"]["owner"] == {"imported": 1}
    assert {r["source"] for r in data["rows"]} >= {"registered_groups", "scheduled_tasks",
                                                    "messages", "sessions"}  # fmt: skip
    after_first = tree_hash(home / "data" / "v2-sessions")
    second = runner.invoke(main, ["migrate-v1", "--home", str(home), "--json", str(tree.root)])
    data2 = json.loads(second.output)
    assert data2["summary"]["registered_groups"] == {"reused": 2}
    assert data2["summary"]["scheduled_tasks"] == {"reused": 1}
    assert tree_hash(home / "data" / "v2-sessions") == after_first


def test_human_report_and_failure_exit(tmp_path: Path) -> None:
    tree = make_v1_tree(tmp_path / "v1")
    c = tree.db()
    add_group(c, "tg:1", "Bad", "../escape")
    c.close()
    res = CliRunner().invoke(main, ["migrate-v1", "--home", str(tmp_path / "h"), str(tree.root)])
    assert res.exit_code == 1
    assert "FAILED" in res.output and "Needs a person" in res.output


def test_not_a_v1_install_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["migrate-v1", "--home", str(tmp_path / "h"),
                                    str(tmp_path / "empty")])  # fmt: skip
    assert res.exit_code == 1
    assert "not a NanoClaw v1 install" in res.output


def test_a_failure_half_way_leaves_the_home_as_it_was(tmp_path: Path) -> None:
    """A v1 DB whose groups read fine but whose message pages are corrupted: the import
    fails at the messages, after the groups went in; nothing of it may stay (issue 14)."""
    tree = populated(tmp_path)
    c = tree.db()
    for i in range(3000):
        add_message(c, "tg:42", f"bulk-{i}", "x" * 300)
    c.close()
    raw = bytearray(tree.db_path.read_bytes())
    size = len(raw)
    raw[size // 2 : size - 4096] = b"\x07" * (size - 4096 - size // 2)  # junk mid-table
    tree.db_path.write_bytes(bytes(raw))
    home = tmp_path / "home"
    assert CliRunner().invoke(main, ["init", "--home", str(home)]).exit_code == 0
    (home / "groups" / "main" / "notes.md").write_text("mine")
    before = tree_hash(home)
    res = CliRunner().invoke(main, ["migrate-v1", "--home", str(home), str(tree.root)])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "the home was left as it was" in lines[0], res.output
    assert tree_hash(home) == before
    # the same import into a home that did not exist leaves no home behind
    fresh = tmp_path / "fresh"
    res = CliRunner().invoke(main, ["migrate-v1", "--home", str(fresh), str(tree.root)])
    assert res.exit_code == 1 and not fresh.exists(), res.output
