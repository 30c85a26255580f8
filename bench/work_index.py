"""Benchmark: the work-index rebuild at host start over N sessions (issue 18, item 1).

    .venv/bin/python bench/work_index.py [--sessions 1000] [--history 100]

Creates a home with N sessions in a temp folder (each with an inbound.db holding ``history``
completed rows and an outbound.db with as many replies, all delivered; every tenth session
also has one pending message), then times ``scan_sessions`` (the worker-thread part) and
``apply`` (the central-DB part). Prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from carapace.bootstrap import init_home
from carapace.config import Home
from carapace.db.central import open_central
from carapace.db.connection import transaction
from carapace.db.session import SessionPaths, init_session_folder, open_inbound, open_outbound
from carapace.host import work_index
from carapace.timefmt import iso


def build(root: Path, n: int, history: int) -> tuple[Home, list[work_index.SessionRef]]:
    home = Home(root)
    init_home(home)
    db = open_central(home.central_db)
    ag = db.execute("SELECT id FROM agent_groups LIMIT 1").fetchone()[0]
    mg = db.execute("SELECT id FROM messaging_groups LIMIT 1").fetchone()[0]
    t = iso(datetime(2026, 1, 1, tzinfo=UTC))
    refs = []
    with transaction(db):
        for i in range(n):
            sid = f"sess-bench-{i:05d}"
            db.execute(
                "INSERT INTO sessions (id, agent_group_id, messaging_group_id, thread_id, "
                "agent_provider, status, container_status, last_active, created_at) "
                "VALUES (?, ?, ?, ?, NULL, 'active', 'stopped', ?, ?)",
                (sid, ag, mg, f"t{i}", t, t),
            )
            refs.append(work_index.SessionRef(sid, ag))
    for i, ref in enumerate(refs):
        paths = SessionPaths.of(home.data_dir, ref.agent_group_id, ref.session_id)
        init_session_folder(paths)
        inb, out = open_inbound(paths), open_outbound(paths)
        with transaction(inb), transaction(out):
            for k in range(history):
                status = "pending" if (i % 10 == 0 and k == history - 1) else "completed"
                inb.execute(
                    "INSERT INTO messages_in (id, seq, kind, timestamp, status, trigger, "
                    "content) VALUES (?, ?, 'chat', ?, ?, 1, '{}')",
                    (f"in-{i}-{k}", 2 * (k + 1), t, status),
                )
                out.execute(
                    "INSERT INTO messages_out (id, seq, kind, timestamp, content) "
                    "VALUES (?, ?, 'chat', ?, '{}')",
                    (f"out-{i}-{k}", 2 * k + 1, t),
                )
                inb.execute("INSERT INTO delivered (message_out_id, delivered_at) VALUES (?, ?)",
                            (f"out-{i}-{k}", t))  # fmt: skip
            inb.execute(
                "CREATE TABLE IF NOT EXISTS carapace_delivery_cursor "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)"
            )
            inb.execute("INSERT OR REPLACE INTO carapace_delivery_cursor VALUES (1, ?)",
                        (2 * history - 1,))  # fmt: skip
        inb.close()
        out.close()
    db.close()
    return home, refs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        home, refs = build(Path(tmp) / "home", args.sessions, args.history)
        now = datetime(2026, 6, 1, tzinfo=UTC)
        scans, applies = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            found = work_index.scan_sessions(home.data_dir, refs, now)
            t1 = time.perf_counter()
            db = open_central(home.central_db)
            work_index.apply(db, found)
            db.close()
            t2 = time.perf_counter()
            scans.append(t1 - t0)
            applies.append(t2 - t1)
        print(f"sessions: {args.sessions}, history rows per session: {args.history} in + "
              f"{args.history} out, runs: {args.runs}")  # fmt: skip
        print(f"sessions with work found: {len(found)}")
        print(f"scan (worker thread): median {statistics.median(scans) * 1000:.0f} ms, "
              f"max {max(scans) * 1000:.0f} ms")  # fmt: skip
        print(f"index writes (event loop): median {statistics.median(applies) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
