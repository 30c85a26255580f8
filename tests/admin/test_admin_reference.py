"""docs/cli-reference.md is generated from the help texts and must be up to date."""

from __future__ import annotations

from pathlib import Path

from carapace.admin.registry import resources
from carapace.commands.reference import generate

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli-reference.md"


def test_cli_reference_is_up_to_date() -> None:
    expected = generate()
    assert DOC.exists(), "run `make docs`"
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/cli-reference.md is stale: run `make docs`"
    )


def test_reference_documents_every_resource_and_the_json_shapes() -> None:
    text = generate()
    for res in resources():
        assert f"### carapace admin {res.name}" in text
        for verb in res.verbs:
            assert f"{res.name} {verb.name}" in text
    assert "## carapace admin: JSON output" in text
