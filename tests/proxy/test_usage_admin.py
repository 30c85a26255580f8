"""``carapace admin usage`` and ``budgets``, the secrets file, the price table."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carapace.bootstrap import init_home
from carapace.config import Home
from carapace.db.central import open_central
from carapace.errors import ConfigError
from carapace.proxy.keys import KeyStore, read_secrets_file
from carapace.proxy.prices import PriceTable
from carapace.proxy.usage import UsageRecord, UsageStore


def _admin(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carapace", "admin", "--home", str(home.root), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _rec(at: str, group: str, model: str, i: int, o: int, cr: int = 0) -> UsageRecord:
    return UsageRecord(at, group, "s1", "anthropic" if model.startswith("claude") else "openai",
                       model, i, o, cr, 0, None, 12.5, 200, False)  # fmt: skip


def test_usage_report_by_period_group_model_json_and_csv(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    store = UsageStore(home.central_db)
    store.record(_rec("2026-03-02T10:00:00.000Z", "g1", "claude-sonnet-4-6", 1000, 100))
    store.record(_rec("2026-03-03T10:00:00.000Z", "g1", "claude-sonnet-4-6", 2000, 200))
    store.record(_rec("2026-03-03T11:00:00.000Z", "g2", "gpt-4o-mini", 4000, 10, 1000))
    store.record(_rec("2026-04-01T00:00:00.000Z", "g2", "local-llama", 5, 5))
    store.close()
    res = _admin(home, "usage", "report", "--by", "month,model", "--json")
    assert res.returncode == 0, res.stderr
    rows = {(r["period"], r["model"]): r for r in json.loads(res.stdout)}
    sonnet = rows[("2026-03", "claude-sonnet-4-6")]
    assert (sonnet["calls"], sonnet["input_tokens"], sonnet["output_tokens"]) == (2, 3000, 300)
    assert sonnet["cost_usd"] == pytest.approx((3000 * 3 + 300 * 15) / 1e6)
    mini = rows[("2026-03", "gpt-4o-mini")]
    assert mini["cost_usd"] == pytest.approx((3000 * 0.15 + 1000 * 0.075 + 10 * 0.6) / 1e6)
    assert rows[("2026-04", "local-llama")]["unpriced_calls"] == 1
    # the price table can be overridden in carapace.toml
    home.config_file.write_text('[prices."local-llama"]\ninput = 1.0\noutput = 1.0\n')
    res = _admin(home, "usage", "report", "--by", "group", "--since", "2026-04-01", "--json")
    assert json.loads(res.stdout) == [{
        "group": "g2", "calls": 1, "errors": 0, "input_tokens": 5, "output_tokens": 5,
        "cache_read_tokens": 1000 * 0, "cache_write_tokens": 0, "cost_usd": 1e-05,
        "unpriced_calls": 0, "avg_latency_ms": 12.5,
    }]  # fmt: skip
    res = _admin(home, "usage", "report", "--by", "week,group")
    assert "2026-W10" in res.stdout and "2026-W14" in res.stdout
    res = _admin(home, "usage", "export", "--until", "2026-03-02")
    lines = list(csv.reader(io.StringIO(res.stdout)))
    assert lines[0][:3] == ["at", "agent_group_id", "session_id"] and len(lines) == 2
    assert lines[1][1] == "g1" and lines[1][5] == "1000"
    bad = _admin(home, "usage", "report", "--since", "yesterday")
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stdout + bad.stderr


def test_budgets_admin_set_reset_list(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    assert (
        _admin(home, "budgets", "set", "--scope", "main", "--daily-tokens", "500").returncode == 0
    )
    assert _admin(home, "budgets", "set", "--scope", "*", "--monthly-usd", "2.5").returncode == 0
    res = _admin(home, "budgets", "list", "--json")
    data = {b["scope"]: b for b in json.loads(res.stdout)}
    assert data["*"]["monthly_usd"] == 2.5
    [own] = [b for s, b in data.items() if s != "*"]
    assert own["daily_tokens"] == 500 and own["reset_at"] is None
    assert _admin(home, "budgets", "reset", "--scope", "main").returncode == 0
    res = _admin(home, "budgets", "list", "--json")
    assert all(b["reset_at"] for b in json.loads(res.stdout) if b["scope"] != "*")
    bad = _admin(home, "budgets", "set", "--scope", "main", "--warn-share", "3")
    assert bad.returncode == 1 and "warn share" in bad.stdout + bad.stderr
    bad = _admin(home, "budgets", "set", "--scope", "nosuch", "--daily-tokens", "1")
    assert bad.returncode == 1


def test_secrets_file_must_be_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("# keys\nexport ANTHROPIC_API_KEY='sk-ant-file'\nOPENAI_API_KEY=sk-oai\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secrets_file(path)
    os.chmod(path, 0o600)
    keys = KeyStore.load(tmp_path, environ={"OPENAI_API_KEY": "sk-env-wins"})
    assert keys.key("anthropic") == "sk-ant-file" and keys.key("openai") == "sk-env-wins"
    assert keys.auth_header("anthropic") == ("x-api-key", "sk-ant-file")
    link = tmp_path / "link"
    link.mkdir()
    (link / "secrets.env").symlink_to(path)
    with pytest.raises(ConfigError, match="cannot open"):
        KeyStore.load(link, environ={})
    path.write_text("not a pair\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_secrets_file(path)


def test_host_refuses_a_world_readable_secrets_file(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    (home.root / "secrets.env").write_text("ANTHROPIC_API_KEY=sk-x\n")
    os.chmod(home.root / "secrets.env", 0o644)
    res = subprocess.run([sys.executable, "-m", "carapace", "run", "--home", str(home.root)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode != 0 and "chmod 600" in res.stderr and "Traceback" not in res.stderr
    assert "sk-x" not in res.stderr + res.stdout


def test_price_table_override_and_bad_values() -> None:
    table = PriceTable.from_settings({"prices": {"claude-sonnet-4": {"input": 1, "output": 2}}})
    assert table.cost("anthropic", "claude-sonnet-4-6", 1_000_000, 1_000_000) == 3.0
    with pytest.raises(ConfigError, match="numeric"):
        PriceTable.from_settings({"prices": {"m": {"input": "x", "output": 1}}})
    assert PriceTable().cost("openai", "unknown-model", 1, 1) is None
    _ = open_central  # the store writes into the migrated central DB (carapace-usage)


def test_proxy_bench_runs_and_writes_its_section(tmp_path: Path) -> None:
    from carapace.proxy.bench import run_proxy_bench, write_docs

    result = run_proxy_bench(n=5, clients=2)
    assert result.n == 5 and result.throughput_per_s > 0 and result.first_byte_max_ms >= 0
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Round trip\n\nx\n\n## Machine\n\n| a | b |\n")
    write_docs(result, doc)
    write_docs(result, doc)  # replaced, not appended twice
    text = doc.read_text()
    assert text.count("## Egress proxy") == 1
    assert text.index("## Round trip") < text.index("## Egress proxy") < text.index("## Machine")
