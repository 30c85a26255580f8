"""One rule for package names (the agent's tool, the host's check, the installer)."""

from __future__ import annotations

import pytest

from carapace.packagenames import valid_package


@pytest.mark.parametrize(("kind", "name", "ok"), [
    ("pip", "requests", True), ("pip", "zope.interface", True), ("pip", "A_b-c.d", True),
    ("pip", "requests==2.0", False), ("pip", "-e", False), ("pip", "../x", False),
    ("pip", "git+https://x/y", False), ("pip", "a" * 100, True), ("pip", "a" * 101, False),
    ("npm", "left-pad", True), ("npm", "@scope/pkg", True), ("npm", "@scope/pkg@1", False),
    ("npm", "Upper", False), ("npm", "a/b", False), ("npm", "--global", False),
    ("npm", "a" * 214, True), ("npm", "a" * 215, False),
    ("apt", "jq", True), ("apt", "libc6-dev", True), ("apt", "g++", True),
    ("apt", "python3.11", True), ("apt", "has_underscore", True),  # NanoClaw allows "_"
    ("apt", "-o", False), ("apt", "jq=1.6", False), ("apt", "a" * 101, False),
    ("pip", 7, False), ("gem", "rails", False), ("pip", "", False),
    ("pip", "foo-", False), ("pip", "foo.", False), ("pip", "x", True),  # PEP 508 ends
])  # fmt: skip
def test_names(kind: str, name: object, ok: bool) -> None:
    assert valid_package(kind, name) is ok
