"""Discord text: Markdown mapping, splitting at 2000 with fences kept whole, and the ids an
agent can put in a row (hostile input: only NanoClaw's Discord forms are accepted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from carapace.channels import discord
from carapace.channels import discord_format as fmt
from carapace.channels.base import OutboundMessage
from carapace.errors import DeliveryError

from .discord_rig import discord_rig


def test_markdown_mapped_and_discord_syntax_escaped() -> None:
    assert fmt.to_discord("**bold** *it* ~~s~~ `code`") == "**bold** *it* ~~s~~ `code`"
    assert fmt.to_discord("__strong__") == "**strong**"
    assert fmt.to_discord("a ||secret|| b") == "a \\|\\|secret\\|\\| b"
    assert fmt.to_discord("`a ||b||`") == "`a ||b||`"  # code is left as written
    assert fmt.to_discord("#### Deep") == "**Deep**"
    assert fmt.to_discord("## Kept") == "## Kept"
    assert fmt.to_discord("![cat](https://x/cat.png)") == "[cat](https://x/cat.png)"
    assert fmt.to_discord("-# tiny") == "\\-# tiny"
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    assert fmt.to_discord(table) == f"```\n{table}\n```"
    fenced = "```py\nx = '__y__ ||z||'\n```"
    assert fmt.to_discord(fenced) == fenced


def test_split_at_boundaries_and_fences_stay_whole() -> None:
    text = "\n\n".join("word " * 100 for _ in range(10))
    parts = fmt.split(text)
    assert all(len(p) <= 2000 for p in parts) and len(parts) > 1
    assert " ".join(parts).split() == text.split()
    code = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(400)) + "\n```"
    parts = fmt.split("intro\n\n" + code)
    assert all(len(p) <= 2000 for p in parts)
    for p in parts[1:]:
        assert p.startswith("```python")  # reopened with its language
    for p in parts:
        assert p.count("```") % 2 == 0  # every chunk's fences are closed
    assert fmt.split("x" * 4500) == ["x" * 1996, "x" * 1996, "x" * 508]
    assert fmt.split("   ") == []


@pytest.mark.parametrize("pid,tid", [
    ("discord:1:2", None), ("discord:@me:5", None), ("discord:1:2", "discord:1:2:3"),
])  # fmt: skip
def test_ids_accepted(pid: str, tid: str | None) -> None:
    assert fmt.target_channel(pid, tid) == int((tid or pid).split(":")[-1])


@pytest.mark.parametrize("pid,tid", [
    ("telegram:42", None), ("discord:1:../2", None), ("discord:1", None), ("discord:x:2", None),
    ("discord:1:2", "discord:1:2"), ("discord:1:2", "discord:1:2:3/../4"), ("", None),
])  # fmt: skip
def test_hostile_ids_refused(pid: str, tid: str | None) -> None:
    with pytest.raises(fmt.BadDiscordId):
        fmt.target_channel(pid, tid)


def test_agent_written_ids_and_text_cannot_reach_other_routes_or_ping() -> None:
    async def scenario() -> None:
        async with discord_rig() as (fake, adapter, _rec):
            ann = fake.person("ann")
            dm = fake.dm(ann)
            pid = f"discord:@me:{dm.id}"
            mid = await adapter.deliver(
                pid,
                None,
                OutboundMessage("chat", {"text": "@everyone look <@&123> <@" + ann.id + ">"}),
            )
            assert fake.allowed_mentions == [{"parse": []}]  # nobody is pinged
            before = list(fake.requests)
            for bad in ("1/../../guilds/1", "../x", "", "12?limit=1"):
                with pytest.raises(DeliveryError) as err:
                    await adapter.react(pid, None, bad, "👍")
                assert err.value.permanent
                with pytest.raises(DeliveryError):
                    await adapter.edit(pid, None, bad, "x")
            assert fake.requests == before  # refused before anything was sent
            card = {
                "type": "ask_question",
                "questionId": "q1",
                "title": "**x** ||y||",
                "question": "@here " + "long " * 600,
                "options": ["o" * 200, "b"],
            }
            await adapter.deliver(pid, None, OutboundMessage("chat-sdk", card))
            msg = fake.bot_messages(dm)[-1]
            labels = [b["label"] for row in msg["components"] for b in row["components"]]
            assert len(labels[0]) == 80 and labels[1] == "b"
            assert all(len(m["content"]) <= 2000 for m in fake.bot_messages(dm))
            assert mid is not None

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_home_without_discord_py_still_lists_channels(tmp_path: Any) -> None:
    """The registry imports ``carapace.channels.discord`` for every home: with discord.py
    missing (a broken install) it still loads, and a configured token fails with one clear line."""
    code = (
        "import sys; sys.modules['discord'] = None\n"
        "from carapace.channels import discord, registry\n"
        "from carapace.config import Home, Settings\n"
        "from carapace.errors import ConfigError\n"
        f"home = Home.resolve({str(tmp_path)!r})\n"
        "assert [c.channel_type for c in registry.list_channels(home, {})][:2] == ['cli', 'discord']\n"
        "assert discord.from_home(home, {}, Settings()) is None\n"
        "try:\n"
        "    discord.from_home(home, {'DISCORD_BOT_TOKEN': 't'}, Settings())\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == discord.NOT_INSTALLED


def test_a_fence_with_a_long_opening_line_ends() -> None:
    """An open fence's opening line is repeated at the head of every chunk: one longer
    than the budget left no room for the text, and the split never ended."""
    text = "```" + "q" * 300 + "\n" + "code line\n" * 400
    chunks = fmt.split(text, 200)
    assert chunks and all(len(c) <= 200 for c in chunks)
    assert sum(c.count("code line") for c in chunks) == 400


@pytest.mark.parametrize("unit", ["__a ", "![", "![a](x", "``a`", "`a``b```c````d"])
def test_a_crafted_line_formats_in_linear_time(unit: str) -> None:
    """Underline and image patterns scanned to the end of the line from every place they
    could start, and a code span backed up through runs of backticks: 16 KB of ``__a ``
    took 1 s, this line (192 KB) would take minutes; it is one pass now (a test that ends
    is the check: the suite's timeout is 120 s)."""
    line = unit * (192 * 1024 // len(unit))
    out = fmt.to_discord(line)
    assert len(out) >= len(line) // 2
    assert all(len(c) <= fmt.MAX_CHARS for c in fmt.split(out))
