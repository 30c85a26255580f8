"""Work-index rebuild benchmark: the host-start scan of every session's files.

Builds a home with N sessions (default 1,000) in carapace's session format; every tenth
has a pending message, every tenth (others) a task due in an hour, every tenth an
undelivered reply, the rest nothing. Then times :func:`carapace.host.work_index.scan_work`
(what ``Host.start`` runs in a worker thread) ``--runs`` times and prints each run.

Usage: ``python bench/work_index.py [--n 1000] [--runs 5] [--home DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from carapace.bootstrap import init_home, open_home
from carapace.config import Home
from carapace.db.groups import create_agent_group
from carapace.db.session import (
    SessionPaths,
    init_session_folder,
    insert_message_in,
    insert_message_out,
    open_inbound,
    open_outbound,
)
from carapace.db.sessions import create_session
from carapace.host.work_index import scan_work
from carapace.timefmt import iso


def build(root: Path, n: int, now: datetime) -> Home:
    home = Home(root)
    init_home(home)
    db, _ = open_home(home)
    ag = create_agent_group(db, "Bench", "bench")
    for i in range(n):
        s = create_session(db, ag.id, None, id=f"sess-bench-{i:05d}", now=now)
        paths = SessionPaths.of(home.data_dir, ag.id, s.id)
        init_session_folder(paths)
        kind = i % 10
        if kind in (0, 1):
            inb = open_inbound(paths)
            after = None if kind == 0 else iso(now + timedelta(hours=1))
            insert_message_in(inb, {
                "id": f"m-{i}", "kind": "chat" if kind == 0 else "task", "timestamp": iso(now),
                "process_after": after, "platform_id": "p", "channel_type": "cli",
                "content": '{"text":"hi"}',
            })  # fmt: skip
            inb.close()
        elif kind == 2:
            out = open_outbound(paths)
            insert_message_out(out, {
                "id": f"o-{i}", "kind": "chat", "timestamp": iso(now), "platform_id": "p",
                "channel_type": "cli", "content": '{"text":"hi"}',
            })  # fmt: skip
            out.close()
    db.close()
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.home or Path(tmp) / "home"
        t0 = time.perf_counter()
        home = build(root, args.n, now)
        print(f"built {args.n} sessions in {time.perf_counter() - t0:.1f} s")
        times = []
        for run in range(args.runs):
            t0 = time.perf_counter()
            found = scan_work(home.central_db, home.data_dir, now)
            ms = (time.perf_counter() - t0) * 1000
            times.append(ms)
            print(f"run {run + 1}: {ms:.0f} ms, {len(found)} sessions with work")
        print(
            f"sessions {args.n}, runs {args.runs}: median {statistics.median(times):.0f} ms, "
            f"max {max(times):.0f} ms (files just written: warm page cache)"
        )


if __name__ == "__main__":
    main()
