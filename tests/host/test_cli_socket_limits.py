"""The CLI socket says so when a line is over its 1 MiB limit (it used to drop it and close
the connection without a word; issue 14 item 5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from carapace.channels.base import ChannelCallbacks, InboundEvent
from carapace.channels.cli import MAX_LINE, CliChannel


def test_an_overlong_line_gets_an_error_not_silence(tmp_path: Path) -> None:
    seen: list[InboundEvent] = []

    async def on_inbound(event: InboundEvent) -> None:
        seen.append(event)

    async def scenario() -> dict[str, object]:
        channel = CliChannel(tmp_path / "cli.sock")
        await channel.start(ChannelCallbacks(on_inbound=on_inbound))
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "cli.sock"))
            line = json.dumps({"text": "y" * (MAX_LINE + 10)}) + "\n"

            async def push() -> None:  # the host may close before it has read it all
                with contextlib.suppress(ConnectionError):
                    writer.write(line.encode())
                    await writer.drain()

            pushing = asyncio.create_task(push())
            reply = await asyncio.wait_for(reader.readline(), 30)
            await pushing
            writer.close()
            return dict(json.loads(reply))
        finally:
            await channel.stop()

    reply = asyncio.run(scenario())
    assert reply["type"] == "error" and "over 1 MiB" in str(reply["error"])
    assert seen == []
