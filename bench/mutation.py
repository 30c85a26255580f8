"""A small mutation sampler (``make mutation``): realistic one-line bugs in core modules,
each applied alone, the module's tests run; a mutant the tests do not fail on survived.

Operators: comparison flips (``==``/``!=``, ``<``/``<=``, ``>``/``>=``), ``and``/``or``,
dropped ``not``, ``True``/``False``, ``+ 1``/``- 1``, a string's trailing ``/`` dropped.
Mutants are drawn at random (``--seed``) from every candidate line of the modules below;
the source file is restored after each run, also on Ctrl-C.

Usage: ``python bench/mutation.py [--n 20] [--seed 1] [--timeout 300] [--module PATH]``
"""

from __future__ import annotations

import argparse
import io
import random
import re
import subprocess
import sys
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "carapace"

#: core module -> the tests that guard it
CORE: dict[str, list[str]] = {
    "host/delivery.py": ["tests/host/test_delivery.py", "tests/host/test_invariant_guards.py"],
    "host/dispatch.py": ["tests/host/test_delivery.py", "tests/host/test_delivery_once.py",
                         "tests/host/test_preview.py", "tests/host/test_invariant_guards.py"],
    "host/delivery_log.py": ["tests/host/test_delivery.py", "tests/host/test_delivery_once.py"],
    "permissions/access.py": ["tests/host/test_access.py", "tests/host/test_invariant_guards.py"],
    "permissions/approvals.py": ["tests/host/test_approvals_flows.py", "tests/host/test_invariant_guards.py"],
    "host/sweep.py": ["tests/host/test_sweep.py"],
    "host/router.py": ["tests/host/test_router.py"],
    "host/work_index.py": ["tests/migrate/test_v2_left_work.py"],
    "runner/workspace.py": ["tests/runner/test_workspace.py"],
    "db/session.py": ["tests/db/test_session_db.py"],
    "db/sessions.py": ["tests/db"],
}  # fmt: skip

OPERATORS: list[tuple[str, str]] = [
    (r" == ", " != "), (r" != ", " == "), (r" <= ", " < "), (r" < ", " <= "),
    (r" >= ", " > "), (r" > ", " >= "), (r" and ", " or "), (r" or ", " and "),
    (r"\bnot ", ""), (r"\bTrue\b", "False"), (r"\bFalse\b", "True"), (r" \+ 1\b", " - 1"),
    (r'/"\)', '")'),
]  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int  # 1-based
    before: str
    after: str


def _string_spans(source: str) -> dict[int, list[tuple[int, int]]]:
    """line -> column spans of string literals (mutants inside them are not code bugs)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING:
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                spans.setdefault(r, []).append((c0 if r == r0 else 0, c1 if r == r1 else 10**6))
    return spans


def candidates(module: str) -> list[Mutant]:
    source = (SRC / module).read_text(encoding="utf-8")
    lines = source.splitlines()
    strings = _string_spans(source)
    out: list[Mutant] = []
    in_doc = False
    for i, line in enumerate(lines, 1):
        code = line.strip()
        if code.count('"""') == 1:
            in_doc = not in_doc
            continue
        if in_doc or not code or code.startswith(("#", "logger.", "import ", "from ")):
            continue
        for pattern, repl in OPERATORS:
            for m in re.finditer(pattern, line):
                if pattern != r'/"\)' and any(a <= m.start() < b for a, b in strings.get(i, [])):
                    continue
                after = line[: m.start()] + re.sub(pattern, repl, m.group(0)) + line[m.end() :]
                if after != line:
                    out.append(Mutant(module, i, line, after))
    return out


def run_mutant(mut: Mutant, timeout: float) -> str:
    path = SRC / mut.module
    original = path.read_text(encoding="utf-8")
    lines = original.splitlines(keepends=True)
    lines[mut.line - 1] = mut.after + "\n"
    try:
        path.write_text("".join(lines), encoding="utf-8")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               *CORE[mut.module]]  # fmt: skip
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return "killed (timeout)"
        return "survived" if res.returncode == 0 else "killed"
    finally:
        path.write_text(original, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="mutants to sample")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--module", action="append", help="limit to these modules (repeatable)")
    args = ap.parse_args()
    modules = args.module or sorted(CORE)
    pool = [m for mod in modules for m in candidates(mod)]
    sample = random.Random(args.seed).sample(pool, min(args.n, len(pool)))
    print(f"{len(pool)} candidate mutants in {len(modules)} modules; sampling {len(sample)}")
    killed = 0
    for k, mut in enumerate(sample, 1):
        t0 = time.monotonic()
        outcome = run_mutant(mut, args.timeout)
        killed += outcome.startswith("killed")
        print(f"[{k}/{len(sample)}] {outcome:17} {mut.module}:{mut.line}  "
              f"{mut.before.strip()!r} -> {mut.after.strip()!r}  ({time.monotonic() - t0:.0f} s)",
              flush=True)  # fmt: skip
    score = 100.0 * killed / len(sample) if sample else 0.0
    print(f"mutation score: {killed}/{len(sample)} killed ({score:.0f} %), seed {args.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
