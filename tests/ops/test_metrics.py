"""``/metrics``: served on loopback, parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from typing import Any

from ops_rig import LiveHost
from prometheus_client.parser import text_string_to_metric_families

from carapace.channels.fake import make_event
from carapace.config import Settings
from carapace.db.session import SessionPaths, insert_message_out, open_outbound
from carapace.db.sessions import list_sessions
from carapace.ops.metrics import HostMetrics, metrics_port
from carapace.timefmt import sqlite_ts


def _scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v
                                                             for k, v in labels.items()))  # fmt: skip


def test_metrics_count_route_delivery_roundtrip_and_usage(live_host: LiveHost) -> None:
    m = HostMetrics()
    live_host.sync(m.install, live_host.host)
    port = m.serve(0)
    try:
        live_host.wire_chat("c1")
        res = live_host.call(live_host.host.route(make_event("hi", platform_id="c1", id="m1")))
        [routed] = res.routed
        [s] = live_host.sync(list_sessions, live_host.host.db)
        paths = SessionPaths.of(live_host.home.data_dir, s.agent_group_id, s.id)
        out = open_outbound(paths)
        for rid, ch in (("r1", "fake"), ("r2", "gone")):
            insert_message_out(out, {"id": rid, "kind": "chat", "timestamp": sqlite_ts(),
                                     "channel_type": ch, "platform_id": "c1",
                                     "in_reply_to": routed.message_id,
                                     "content": json.dumps({"text": rid})})  # fmt: skip
        out.close()
        live_host.channel.fail_always = False
        live_host.call(live_host.host.deliver_once(s.id))
        live_host.call(live_host.host.sweep_once())
        first = _scrape(port)
        assert _value(first, "carapace_messages_routed_total", channel="fake") == 1
        assert _value(first, "carapace_messages_delivered_total", channel="fake") == 1
        assert _value(first, "carapace_roundtrip_seconds_count") == 1
        assert _value(first, "carapace_sweep_seconds_count") >= 1
        assert _value(first, "carapace_drain_seconds_count") >= 1
        assert "carapace_runners_live" in first and "carapace_runners_queued" in first
        assert _value(first, "carapace_approvals_pending") == 0
        assert "carapace_event_loop_stall_max_seconds" in first
        assert "carapace_model_calls_total" not in first  # no usage table: not exported
        conn = sqlite3.connect(live_host.home.central_db)
        conn.execute("CREATE TABLE IF NOT EXISTS carapace_usage (id INTEGER PRIMARY KEY, "
                     "at TEXT, agent_group_id TEXT, input_tokens INTEGER, "
                     "output_tokens INTEGER)")  # fmt: skip
        conn.executemany("INSERT INTO carapace_usage (at, agent_group_id, input_tokens, "
                         "output_tokens) VALUES (?, ?, ?, ?)",
                         [("x", "ag-1", 10, 5), ("y", "ag-1", 1, 2)])  # fmt: skip
        conn.commit()
        conn.close()
        second = _scrape(port)
        assert _value(second, "carapace_model_calls_total", agent_group="ag-1") == 2
        assert _value(second, "carapace_model_tokens_total", agent_group="ag-1", kind="input") == 11
    finally:
        m.stop()


def test_stall_maximum_is_reported_then_reset() -> None:
    m = HostMetrics()
    m.note_stall(0.5)
    m.note_stall(0.2)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert fams["carapace_event_loop_stall_max_seconds"].samples[0].value == 0.5
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert fams["carapace_event_loop_stall_max_seconds"].samples[0].value == 0.0


def test_metrics_port_setting() -> None:
    assert metrics_port(Settings()) == 0
    assert metrics_port(Settings(extra={"metrics": {"port": 9464}})) == 9464
    import pytest

    from carapace.errors import ConfigError

    for bad in ({"port": "x"}, {"port": 70000}, {"port": -1}):
        with pytest.raises(ConfigError):
            metrics_port(Settings(extra={"metrics": bad}))
    with pytest.raises(ConfigError):
        metrics_port(Settings(extra={"metrics": 3}))
