"""``carapace run``, ``chat``, ``send`` and ``bench`` (loaded lazily by ``carapace.cli``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from carapace.cli import clean_errors, home_option
from carapace.config import Home
from carapace.errors import CarapaceError
from carapace.limits import mechanism as limits_mechanism

if TYPE_CHECKING:
    from carapace.host.admin_server import AdminDispatch

logger = logging.getLogger(__name__)


def admin_dispatch() -> AdminDispatch:
    """The admin verbs for the host this command builds (the admin floor sits above it)."""
    from carapace.admin.dispatch import dispatch

    return dispatch


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
    from carapace.ops.runtime import setup_logging

    setup_logging(h)
    asyncio.run(_run(h))


async def _run(home: Home) -> None:
    from carapace.host.client import build_host
    from carapace.web.config import web_settings

    web_settings(home.load_settings(), home)  # a [web] mistake refuses the start, in one line
    host = build_host(home, admin=admin_dispatch())
    from carapace.ops.runtime import start_metrics

    metrics = start_metrics(host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the sockets appear: no window
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    from carapace.ops.runtime import start_retention
    from carapace.web.server import start_web

    start_retention(host)
    try:
        web = await start_web(host)
    except CarapaceError as exc:  # the host serves its other channels; the reason is shown
        web = None
        click.echo(f"error: web server not started: {exc}", err=True)
    click.echo(f"carapace host running for {home.root} (cli socket {home.cli_socket})", err=True)
    if web is not None:
        click.echo(f"web server at {web.url} (sign in: carapace web login-link)", err=True)
    click.echo(f"runner backend: {host.backend_note}", err=True)
    click.echo(f"runner limits: {limits_mechanism()}", err=True)
    try:
        await stop.wait()
    finally:
        if web is not None:
            await web.stop()
        await host.stop()
        host.close()
        if metrics is not None:
            metrics.stop()


def _owns(eid: str, msg: dict[str, Any]) -> bool:
    irt = msg.get("in_reply_to")
    return isinstance(irt, str) and (irt == eid or irt.startswith(eid + ":"))


def _held_note(ids: list[Any]) -> str:
    return (f"[held for approval ({', '.join(str(i) for i in ids)}): an admin must approve "
            "this sender; the reply comes to the next client of this chat]")  # fmt: skip


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
    """Send one message to the agent, print its reply(ies) and exit.

    \b
    Replies to earlier messages that were waiting for a reader (e.g. to a message held for
    approval and approved since) are printed too, marked "[earlier]". A message from an
    unknown sender on a request_approval chat is held: that is printed, exit status 0.
    Exit status 1: not routed, or no reply within --timeout.
    """
    _quiet_embedded_logs()

    def show(msg: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(msg, ensure_ascii=False))
        elif msg.get("type") == "held":
            click.echo(_held_note(msg.get("held") or []))
        else:
            mark = "" if msg.get("own") else "[earlier] "
            click.echo(mark + (msg.get("text") or json.dumps(msg.get("content"))))

    asyncio.run(_send(Home.resolve(home), user, text, timeout, quiet_period, show))


async def _send(
    home: Home, user: str, text: str, timeout: float, quiet: float,
    show: Callable[[dict[str, Any]], None],
) -> None:  # fmt: skip
    from carapace.host.client import connect_or_embed, stop_embedded

    client, host = await connect_or_embed(home, "send", admin=admin_dispatch())
    answered = acked = False
    try:
        eid = await client.say(text, user)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if answered:
                left = min(left, quiet)
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(client.read(), left)
            except TimeoutError:
                break
            if msg is None:
                raise click.ClickException("the host closed the connection")
            if msg.get("type") == "ack" and msg.get("id") == eid and msg.get("routed"):
                acked = True
            elif msg.get("type") == "ack" and msg.get("id") == eid:
                if msg.get("held"):
                    show({"type": "held", "id": eid, "held": msg["held"]})
                    return
                raise click.ClickException(
                    f"the message was not routed to any agent ({msg.get('dropped') or 'dropped'})"
                )
            if msg.get("type") == "message":
                own = _owns(eid, msg)
                # a turn answers a batch and names its first message: a reply that comes
                # after our ack may answer ours together with an earlier one
                answered = answered or own or (acked and bool(msg.get("in_reply_to")))
                show({**msg, "own": own})
    finally:
        await client.close()
        await stop_embedded(host)
    if not answered:
        raise click.ClickException(f"no reply within {timeout:g} s")


@click.command()
@home_option
@click.option("--as", "user", default="local", show_default=True, help="Sender handle (cli:USER).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Non-interactive input: seconds to wait for the replies after end of input.")  # fmt: skip
@click.option("--quiet-period", type=float, default=0.4, hidden=True)
@clean_errors
def chat(home: str | None, user: str, timeout: float, quiet_period: float) -> None:
    """Talk to the default agent interactively (starts a host if none runs).

    \b
    Each input line is one message; replies print as "agent> …". With input from a pipe or
    file, the lines are sent as they are read and, at end of input, chat waits until every
    routed message has a reply (at most --timeout seconds), then exits (status 1 when some
    reply did not come).
    """
    _quiet_embedded_logs()
    ok = asyncio.run(_chat(Home.resolve(home), user, timeout, quiet_period))
    if not ok:
        raise click.ClickException(f"not every message was answered within {timeout:g} s")


async def _chat(home: Home, user: str, timeout: float, quiet: float) -> bool:
    from carapace.host.client import connect_or_embed, stop_embedded
    from carapace.timefmt import new_id

    client, host = await connect_or_embed(home, "chat", admin=admin_dispatch())
    interactive = sys.stdin.isatty()
    where = "embedded host" if host else "running host"
    if interactive:
        click.echo(f"carapace chat ({where}, home {home.root}) — Ctrl-D to quit")
    waiting: set[str] = set()  # sent, not yet answered (nor refused, nor held)
    routed: list[str] = []  # acked as routed, in order
    changed = asyncio.Event()

    def answered(msg: dict[str, Any]) -> None:
        # a turn answers a batch: the reply names the batch's first message, and the
        # messages routed after it (before this reply) were in that batch too
        first = next((i for i, e in enumerate(routed) if _owns(e, msg)), None)
        if first is not None:
            waiting.difference_update(routed[first:])

    async def printer() -> None:
        while True:
            msg = await client.read()
            if msg is None:
                click.echo("[host went away]")
                return
            if msg.get("type") == "message":
                click.echo(f"agent> {msg.get('text') or json.dumps(msg.get('content'))}")
                answered(msg)
            elif msg.get("type") == "ack" and msg.get("routed"):
                routed.append(str(msg.get("id")))
            elif msg.get("type") == "ack":
                waiting.discard(str(msg.get("id")))
                if msg.get("held"):
                    click.echo(_held_note(msg["held"]))
                else:
                    click.echo(f"[not routed: {msg.get('dropped')}]")
            changed.set()

    task = asyncio.get_running_loop().create_task(printer())
    try:
        while not task.done():
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            if line.strip():
                eid = new_id("cli")
                waiting.add(eid)
                await client.say(line.rstrip("\n"), user, eid)
        if interactive:
            return True
        deadline = time.monotonic() + timeout
        while waiting and not task.done() and time.monotonic() < deadline:
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
        while not task.done():  # let further replies to the last message arrive
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), quiet)
            except TimeoutError:
                break
        return not waiting
    finally:
        task.cancel()
        await client.close()
        await stop_embedded(host)


@click.group()
def bench() -> None:
    """Benchmarks."""


@bench.command("proxy")
@click.option("--n", "n", type=int, default=300, show_default=True, help="Calls each way.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--write-docs", is_flag=True, help="Update the section in docs/benchmarks.md.")
@clean_errors
def proxy_bench(n: int, as_json: bool, write_docs: bool) -> None:
    """Egress proxy: added latency per call (p50/p99), throughput, streamed first byte."""
    from carapace.proxy.bench import run_proxy_bench
    from carapace.proxy.bench import write_docs as write

    result = run_proxy_bench(n)
    if write_docs:
        click.echo(f"wrote {write(result)}", err=True)
    click.echo(json.dumps(result.as_json()) if as_json else result.summary())


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
