"""The no-follow, confined file primitives every host path an agent can write goes through."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from carapace import safefs
from carapace.safefs import UnsafePathError


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs with the kernel's openat2 and with the component-walk fallback."""
    saved = list(safefs._openat2_state)
    safefs._openat2_state[:] = [] if request.param == "openat2" else [False]
    yield str(request.param)
    safefs._openat2_state[:] = saved


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "agent"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("hello")
    secret = tmp_path / "secret"
    secret.write_text("KEY")
    return root, secret


def test_reads_a_plain_file(mode: str, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert safefs.read_beneath(root, "sub/a.txt", 100) == b"hello"
    assert safefs.list_beneath(root, "sub") == ["a.txt"]


@pytest.mark.parametrize("where", ["leaf", "middle"])
def test_refuses_symlinks_anywhere(mode: str, tree: tuple[Path, Path], where: str) -> None:
    root, secret = tree
    if where == "leaf":
        (root / "sub" / "link").symlink_to(secret)
        rel = "sub/link"
    else:
        (root / "hop").symlink_to(secret.parent)
        rel = "hop/secret"
    with pytest.raises(UnsafePathError, match=r"symbolic link|leaves"):
        safefs.read_beneath(root, rel, 100)


def test_refuses_a_link_inside_the_root_too(mode: str, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias").symlink_to("sub/a.txt")
    with pytest.raises(UnsafePathError):
        safefs.read_beneath(root, "alias", 100)


@pytest.mark.parametrize("rel", ["../secret", "sub/../../secret", "/etc/passwd", "", "."])
def test_refuses_escapes(mode: str, tree: tuple[Path, Path], rel: str) -> None:
    root, _ = tree
    with pytest.raises(UnsafePathError):
        safefs.read_beneath(root, rel, 100)


def test_refuses_fifo_without_blocking(mode: str, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    os.mkfifo(root / "pipe")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        safefs.read_beneath(root, "pipe", 100)


def test_refuses_oversized(mode: str, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(UnsafePathError, match="larger"):
        safefs.read_beneath(root, "sub/a.txt", 3)


def test_missing_file_is_file_not_found(mode: str, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(FileNotFoundError):
        safefs.read_beneath(root, "sub/none", 100)


def test_write_replaces_a_planted_link_instead_of_following_it(
    mode: str, tree: tuple[Path, Path]
) -> None:
    root, secret = tree
    (root / "container.json").symlink_to(secret)
    safefs.write_beneath(root, "container.json", b"{}", 0o644)
    assert secret.read_text() == "KEY"
    assert not (root / "container.json").is_symlink()
    assert (root / "container.json").read_bytes() == b"{}"
    assert oct((root / "container.json").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


def test_write_refuses_a_linked_parent(mode: str, tree: tuple[Path, Path]) -> None:
    root, secret = tree
    (root / "out").symlink_to(secret.parent)
    with pytest.raises(UnsafePathError):
        safefs.write_beneath(root, "out/x", b"data")
    assert not (secret.parent / "x").exists()


def test_copy_between_roots(mode: str, tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    dst = tmp_path / "inbox"
    dst.mkdir()
    assert safefs.copy_beneath(root, "sub/a.txt", dst, "a.txt", 100) == 5
    assert (dst / "a.txt").read_text() == "hello"


def test_root_itself_may_not_be_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePathError):
        safefs.open_root(tmp_path / "fake")


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "a\\b", "x\x00y", "line\nbreak", "a" * 256, 5, None]
)
def test_plain_name_refuses(name: object) -> None:
    with pytest.raises(UnsafePathError):
        safefs.plain_name(name)


@pytest.mark.parametrize("name", ["report.pdf", "msg-171.2", "é tude", ".hidden", "a" * 255])
def test_plain_name_accepts(name: str) -> None:
    assert safefs.plain_name(name) == name
