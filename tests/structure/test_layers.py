"""The package's floors (docs/architecture.md, "Floors"): a top-level package imports only
from its own floor or lower ones, and no two top-level packages import each other. Imports
under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are not counted; every
other import counts, at module level or inside a function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import carapace

ROOT = Path(carapace.__file__).parent

#: lowest first. A new top-level package or module must be placed here, on purpose.
FLOORS: list[set[str]] = [
    {"errors", "jsonutil", "timefmt", "config", "perms", "safefs", "unixsock", "limits",
     "watch", "stats", "secretsfile", "packagenames", "record", "log"},
    {"db"},
    {"bootstrap", "channels", "sched", "testing"},
    {"runner"},
    {"sandbox"},
    {"packages"},
    {"permissions"},
    {"proxy"},
    {"host"},
    {"ops", "bench"},
    {"admin"},
    {"migrate", "web"},
    {"commands", "cli"},
]  # fmt: skip


def _floor(pkg: str) -> int:
    for i, members in enumerate(FLOORS):
        if pkg in members:
            return i
    raise AssertionError(f"carapace.{pkg} is on no floor: add it to FLOORS and the docs")


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out.update(id(n) for n in ast.walk(child))
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if path.name == "__init__.py" else parts[:-1]
                base = base[: len(base) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return {f for f in found if f.split(".")[0] == "carapace"}


def _package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        if len(parts) < 2 or parts[1] == "__main__":
            continue  # the package root re-exports lazily; __main__ is the entry point
        src = parts[1]
        for target in _imports(path, module):
            tparts = target.split(".")
            if len(tparts) < 2:
                continue
            dst = tparts[1]
            if dst != src and ((ROOT / dst).is_dir() or (ROOT / f"{dst}.py").is_file()):
                edges[(src, dst)].append(f"{module} -> {target}")
    return edges


def test_every_import_goes_down_or_across_the_same_floor() -> None:
    upward = [
        f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)}): {how[0]}"
        for (a, b), how in sorted(_package_edges().items())
        if _floor(b) > _floor(a)
    ]
    assert upward == []


def test_no_import_cycle_between_top_level_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in _package_edges():
        graph[a].add(b)
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycle = path[path.index(nxt) :]
                if min(cycle) == cycle[0]:
                    cycles.append([*cycle, nxt])
            elif len(path) < 12:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    from carapace.host.host import Host\n")
    assert "carapace.host.host" in _imports(tmp_path / "m.py", "carapace.db.m")
    (tmp_path / "t.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from carapace.host import x\n"
    )
    assert _imports(tmp_path / "t.py", "carapace.db.t") == set()
