"""Issue 12 item 7: one session's hostile ``outbound.db`` cannot freeze the host.

The hostile agent (mock script → bash inside bubblewrap) rewrites its own ``outbound.db``:
``messages_out`` becomes a slow view (a recursive CTE) or gains a trigger. Before the fix
the host read it with blocking calls on its event loop (one such file froze a host for ~13
minutes). Now the host refuses that file (a log line and a notice to the agent), keeps
delivering another session's replies, and answers admin requests at once. The admin
socket's latency is measured while the hostile file is being refused; the figure is printed
(issue target: < 100 ms), the assertion is generous (< 1 s)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sec_helpers import (
    Recorder,
    bash_rule,
    event,
    main_group,
    make_home,
    make_host,
    paths_of,
    python_cmd,
    reply_to,
    require_bwrap,
    sessions_of,
    system_notes,
    wait_for,
    write_script,
)

from carapace.admin.client import send_frame
from carapace.db import messaging

SLOW = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300000000) "
        "SELECT o.* FROM real_out o WHERE (SELECT max(i) FROM r) > 0")  # fmt: skip

ATTACKS = {
    "slow-view": [
        "ALTER TABLE messages_out RENAME TO real_out",
        f"CREATE VIEW messages_out AS {SLOW}",
    ],
    "trigger": [
        "CREATE TABLE real_out (x)",
        "CREATE TRIGGER slow AFTER DELETE ON processing_ack BEGIN "
        f"SELECT count(*) FROM ({SLOW}); END",
    ],
}


def _poison_code(outbound: Path, statements: list[str]) -> str:
    return (
        "import sqlite3\n"
        f"c = sqlite3.connect({str(outbound)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=PERSIST')\n"
        + "".join(f"c.execute({s!r})\n" for s in statements)
        + "print('poisoned')\n"
    )


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_outbound_db_is_refused_and_the_host_stays_responsive(
    tmp_path: Path, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    require_bwrap()
    caplog.set_level(logging.INFO)
    home = make_home(tmp_path)
    channel = Recorder()
    host = make_host(home, channel, sockets=True)
    g = main_group(host)
    mg = messaging.create_messaging_group(host.db, "cli", "other", name="other",
                                          unknown_sender_policy="public")  # fmt: skip
    messaging.create_wiring(host.db, mg.id, g.id, engage_mode="pattern", engage_pattern=".")
    latencies: list[float] = []

    def admin_once() -> None:
        t0 = time.perf_counter()
        resp = send_frame(home.admin_socket, {"id": "lat", "command": "groups-list", "args": {}},
                          timeout=30)  # fmt: skip
        latencies.append(time.perf_counter() - t0)
        assert resp["ok"], resp

    async def scenario() -> None:
        await host.start()
        try:
            assert await reply_to(host, channel, "hello")
            [hostile] = sessions_of(host)
            hp = paths_of(host, hostile)
            write_script(home, "main", [bash_rule(
                "poison", python_cmd(_poison_code(hp.outbound, ATTACKS[attack])))])  # fmt: skip
            await host.route(event("poison now"))
            await wait_for(lambda: any("refused your outbound.db" in n
                                       for n in system_notes(hp)),
                           what="the refusal notice")  # fmt: skip
            # while the host keeps being woken by the hostile session: admin and others
            for _ in range(3):
                host._on_outbound_change(hostile.id)
                await asyncio.to_thread(admin_once)
            channel.to.clear()
            await host.route(event("hello from the other chat", platform_id="other"))
            await wait_for(lambda: [m for p, m in channel.to if p == "other"],
                           what="the other session's reply")  # fmt: skip
            for _ in range(5):
                host._on_outbound_change(hostile.id)
                await host.sweep_once()
                await asyncio.to_thread(admin_once)
        finally:
            await host.stop()
            host.close()

    asyncio.run(scenario())
    worst = max(latencies)
    print(f"\nadmin latency with a hostile outbound.db ({attack}): "
          f"max {worst * 1000:.1f} ms, median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms "
          f"over {len(latencies)} requests")  # fmt: skip
    assert worst < 1.0
    refusals = [r for r in caplog.records if "outbound.db refused" in r.getMessage()]
    assert len(refusals) == 1, "one clear log line per session and reason"
