"""One rule for package names (carapace.pkgnames), used by the agent's install_packages tool,
the approval handler and the installer. The cases below are where the three copies it
replaces used to differ, plus the attacks every copy had to refuse."""

from __future__ import annotations

import pytest

from carapace import pkgnames
from carapace.errors import ValidationError
from carapace.packages.install import check_names
from carapace.permissions.system_actions import _packages


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [
        ("pip", "requests", True),
        ("pip", "Flask_Login", True),
        ("pip", "a", True),
        ("pip", "foo-", False),  # PEP 508: a name ends in a letter or digit (was accepted)
        ("pip", "foo.", False),
        ("pip", "x" * 100, True),
        ("pip", "x" * 101, False),
        ("pip", "requests==2.0", False),
        ("pip", "-e.", False),
        ("pip", "git+https://x/y", False),
        ("npm", "left-pad", True),
        ("npm", "@scope/pkg", True),
        ("npm", "left-pad@1.0", False),
        ("npm", "Upper", False),
        ("npm", "a" * 214, True),  # npm's own limit; the installer used to cap at 100,
        ("npm", "a" * 215, False),  # the tool and the approval handler not at all
        ("npm", "../x", False),
        ("apt", "libc6", True),
        ("apt", "g++", True),
        ("apt", "curl; rm -rf /", False),
        ("apt", "a" * 101, False),  # was unbounded everywhere
        ("apt", "-oAPT::x", False),
        ("pip", 3, False),
        ("npm", None, False),
    ],
)
def test_rule(kind: str, name: object, ok: bool) -> None:
    assert pkgnames.valid(kind, name) is ok
    assert (pkgnames.problem(kind, name) is None) is ok


@pytest.mark.parametrize(
    ("kind", "name"), [("pip", "foo-"), ("npm", "a" * 215), ("apt", "a" * 101)]
)
def test_installer_and_approval_apply_the_same_rule(kind: str, name: str) -> None:
    args = {"pip": [], "npm": [], "apt": []}
    args[kind] = [name]
    with pytest.raises(ValidationError, match=f"invalid {kind} package name"):
        check_names(args["pip"], args["npm"], args["apt"])
    with pytest.raises(ValidationError, match=f"invalid {kind} package name"):
        _packages(args)


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        pkgnames.valid("gem", "rails")
