"""``carapace run``, ``chat``, ``send`` and ``bench`` (loaded lazily by ``carapace.cli``)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

import click

from carapace.cli import clean_errors, home_option
from carapace.config import Home

logger = logging.getLogger(__name__)


def _quiet_embedded_logs() -> None:
    if logging.getLogger().level >= logging.WARNING:
        logging.getLogger("carapace").setLevel(logging.ERROR)


@click.command()
@home_option
@clean_errors
def run(home: str | None) -> None:
    """Run the host in the foreground (Ctrl-C or SIGTERM stops it cleanly)."""
    from carapace.bootstrap import init_home

    h = Home.resolve(home)
    report = init_home(h)
    for line in report.created:
        click.echo(f"created {line}", err=True)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("carapace").setLevel(logging.INFO)
    asyncio.run(_run(h))


async def _run(home: Home) -> None:
    from carapace.host.client import build_host

    host = build_host(home)
    await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"carapace host running for {home.root} (cli socket {home.cli_socket})", err=True)
    try:
        await stop.wait()
    finally:
        await host.stop()
        host.close()


@click.command()
@home_option
@click.option("--as", "user", default="local", show_default=True, help="Sender handle (cli:USER).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@click.option("--quiet-period", type=float, default=0.4, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON lines.")
@click.argument("text")
@clean_errors
def send(home: str | None, user: str, timeout: float, quiet_period: float, as_json: bool,
         text: str) -> None:  # fmt: skip
    """Send one message to the agent, print its reply(ies) and exit."""
    _quiet_embedded_logs()
    replies = asyncio.run(_send(Home.resolve(home), user, text, timeout, quiet_period))
    for r in replies:
        click.echo(json.dumps(r, ensure_ascii=False) if as_json else (r.get("text") or ""))


async def _send(
    home: Home, user: str, text: str, timeout: float, quiet: float
) -> list[dict[str, Any]]:
    from carapace.host.client import connect_or_embed, stop_embedded

    client, host = await connect_or_embed(home, "send")
    replies: list[dict[str, Any]] = []
    try:
        eid = await client.say(text, user)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if replies:
                left = min(left, quiet)
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(client.read(), left)
            except TimeoutError:
                break
            if msg is None:
                raise click.ClickException("the host closed the connection")
            if msg.get("type") == "ack" and msg.get("id") == eid and not msg.get("routed"):
                raise click.ClickException(
                    f"the message was not routed to any agent ({msg.get('dropped') or 'dropped'})"
                )
            if msg.get("type") == "message":
                replies.append(msg)
    finally:
        await client.close()
        await stop_embedded(host)
    if not replies:
        raise click.ClickException(f"no reply within {timeout:g} s")
    return replies


@click.command()
@home_option
@click.option("--as", "user", default="local", show_default=True, help="Sender handle (cli:USER).")
@clean_errors
def chat(home: str | None, user: str) -> None:
    """Talk to the default agent interactively (starts a host if none runs)."""
    _quiet_embedded_logs()
    asyncio.run(_chat(Home.resolve(home), user))


async def _chat(home: Home, user: str) -> None:
    from carapace.host.client import connect_or_embed, stop_embedded

    client, host = await connect_or_embed(home, "chat")
    where = "embedded host" if host else "running host"
    click.echo(f"carapace chat ({where}, home {home.root}) — Ctrl-D to quit")

    async def printer() -> None:
        while True:
            msg = await client.read()
            if msg is None:
                click.echo("[host went away]")
                return
            if msg.get("type") == "message":
                click.echo(f"agent> {msg.get('text') or json.dumps(msg.get('content'))}")
            elif msg.get("type") == "ack" and not msg.get("routed"):
                click.echo(f"[not routed: {msg.get('dropped')}]")

    task = asyncio.get_running_loop().create_task(printer())
    try:
        while not task.done():
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            if line.strip():
                await client.say(line.rstrip("\n"), user)
        await asyncio.sleep(0)
    finally:
        task.cancel()
        await client.close()
        await stop_embedded(host)


@click.group()
def bench() -> None:
    """Benchmarks."""


@bench.command("roundtrip")
@home_option
@click.option("--n", "n", type=int, default=50, show_default=True, help="Warm round trips.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--write-docs", is_flag=True, help="Write docs/benchmarks.md.")
@clean_errors
def roundtrip(home: str | None, n: int, as_json: bool, write_docs: bool) -> None:
    """Inbound event → delivered reply latency (mock provider, warm runner, cold start)."""
    import tempfile

    from carapace.host.bench import run_roundtrip
    from carapace.host.bench import write_docs as write

    _quiet_embedded_logs()
    with tempfile.TemporaryDirectory(prefix="carapace-bench-") as tmp:
        result = asyncio.run(run_roundtrip(Home.resolve(home or tmp), n))
    if write_docs:
        path = write(result)
        click.echo(f"wrote {path}", err=True)
    if as_json:
        click.echo(json.dumps(result.as_json()))
    else:
        click.echo(result.summary())
