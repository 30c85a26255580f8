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

from carapace.cli import clean_errors, home_option, seconds_option
from carapace.config import Home
from carapace.errors import CarapaceError
from carapace.host.chat_client import RECONNECT_GRACE_S, held_note, owns
from carapace.host.client import check_message, check_user, preflight
from carapace.limits import mechanism as limits_mechanism
from carapace.timefmt import new_id

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
    preflight(h)  # a bad carapace.toml is refused before the home is touched
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
    from carapace.ops.runtime import freeze_heap

    # what the imports and the host's construction made lives as long as the process: out
    # of the collector's walks before the host serves anything (a full collection during
    # the start stalled the loop 7-10 ms with 1,000 sessions, `carapace bench scale`)
    freeze_heap()
    await host.start()
    from carapace.ops.runtime import start_retention
    from carapace.web.server import start_web

    start_retention(host)
    try:
        web = await start_web(host)
    except CarapaceError as exc:  # the host serves its other channels; the reason is shown
        web = None
        click.echo(f"error: web server not started: {exc}", err=True)
    freeze_heap()  # the host is up: its long-lived objects leave the collector's walks
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


@click.command()
@home_option
@click.option("--as", "user", default="local", show_default=True, help="Sender handle (cli:USER).")
@click.option("--timeout", type=float, default=60.0, show_default=True, callback=seconds_option,
              help="Seconds to wait.")  # fmt: skip
@click.option("--quiet-period", type=float, default=0.4, hidden=True, callback=seconds_option)
@click.option("--reconnect-grace", type=float, default=RECONNECT_GRACE_S, hidden=True,
              callback=seconds_option)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON lines.")
@click.argument("text")
@clean_errors
def send(home: str | None, user: str, timeout: float, quiet_period: float,
         reconnect_grace: float, as_json: bool, text: str) -> None:  # fmt: skip
    """Send one message to the agent, print its reply(ies) and exit.

    \b
    Replies to earlier messages that were waiting for a reader (e.g. to a message held for
    approval and approved since) are printed too, marked "[earlier]". A message from an
    unknown sender on a request_approval chat is held: that is printed, exit status 0.
    Exit status 1: not routed, or no reply within --timeout. A message that is empty, not
    UTF-8 or over 512 KiB is refused before anything is sent. When the host goes away
    before the reply (restarted, crashed), send reconnects (to the home's host when it is
    back within 10 s, else to an embedded host) and says the message again with the same
    id: it is stored once and its reply printed once.
    """
    check_message(text)
    check_user(user)
    h = Home.resolve(home)
    preflight(h)
    _quiet_embedded_logs()

    def show(msg: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(msg, ensure_ascii=False))
        elif msg.get("type") == "held":
            click.echo(held_note(msg.get("held") or []))
        else:
            mark = "" if msg.get("own") else "[earlier] "
            click.echo(mark + (msg.get("text") or json.dumps(msg.get("content"))))

    asyncio.run(_send(h, user, text, timeout, quiet_period, show, reconnect_grace))


async def _send(
    home: Home, user: str, text: str, timeout: float, quiet: float,
    show: Callable[[dict[str, Any]], None], grace: float = RECONNECT_GRACE_S,
) -> None:  # fmt: skip
    """Send once, print the replies. When the host goes away before the reply (a restart, a
    crash), reconnect — to the home's host when it is back within ``grace`` seconds, else to
    an embedded one — and say the message again with the same event id: the router stores
    an id once, and saying it again makes this connection the reply's reader. A reply
    re-sent after a host crash (same key) is shown once."""
    from carapace.host.chat_client import reconnect
    from carapace.host.client import connect_or_embed, stop_embedded

    admin = admin_dispatch()
    client, host = await connect_or_embed(home, "send", admin=admin)
    answered = False
    seen: set[Any] = set()
    eid = new_id("cli")
    deadline = time.monotonic() + timeout
    try:
        with contextlib.suppress(OSError, ConnectionError):
            await client.say(text, user, eid)
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
            except (OSError, ConnectionError):
                msg = None
            if msg is None:  # the host went away
                await client.close()
                try:
                    client, host = await reconnect(home, "send", host, grace=grace,
                                                   admin=admin, deadline=deadline)  # fmt: skip
                except TimeoutError:
                    raise click.ClickException(
                        f"the host went away and did not come back within {timeout:g} s"
                    ) from None
                with contextlib.suppress(OSError, ConnectionError):
                    await client.say(text, user, eid)  # same id: stored once
                continue
            if msg.get("type") == "ack" and msg.get("id") == eid and msg.get("routed"):
                pass
            elif msg.get("type") == "ack" and msg.get("id") == eid:
                if msg.get("held"):
                    show({"type": "held", "id": eid, "held": msg["held"]})
                    return
                raise click.ClickException(
                    f"the message was not routed to any agent ({msg.get('dropped') or 'dropped'})"
                )
            if msg.get("type") == "message":
                key = msg.get("key") or msg.get("id")
                if key in seen:  # re-sent after a host crash: shown once
                    continue
                seen.add(key)
                own = owns(eid, msg)
                answered = answered or own
                show({**msg, "own": own})
    finally:
        await client.close()
        await stop_embedded(host)
    if not answered:
        raise click.ClickException(f"no reply within {timeout:g} s")


@click.command()
@home_option
@click.option("--as", "user", default="local", show_default=True, help="Sender handle (cli:USER).")
@click.option("--timeout", type=float, default=60.0, show_default=True, callback=seconds_option,
              help="Non-interactive input: seconds to wait for the replies after end of input.")  # fmt: skip
@click.option("--quiet-period", type=float, default=0.4, hidden=True, callback=seconds_option)
@click.option("--reconnect-grace", type=float, default=10.0, hidden=True, callback=seconds_option)
@clean_errors
def chat(home: str | None, user: str, timeout: float, quiet_period: float,
         reconnect_grace: float) -> None:  # fmt: skip
    """Talk to the default agent interactively (starts a host if none runs).

    \b
    Each input line is one message; replies print as "agent> …". With input from a pipe or
    file, the lines are sent as they are read and, at end of input, chat waits until every
    routed message has a reply (at most --timeout seconds), then exits (status 1 when some
    reply did not come, or some line was refused).
    \b
    A line that is not UTF-8, or over 512 KiB, is not sent: "[not sent: …]" says why.
    When the host goes away (restarted, crashed), chat says so, reconnects (to the home's
    host when it is back within 10 s, else to an embedded host) and sends again what was not
    acknowledged; no message is lost and no reply is printed twice.
    """
    check_user(user)
    h = Home.resolve(home)
    preflight(h)
    _quiet_embedded_logs()
    unanswered, refused = asyncio.run(_chat(h, user, timeout, quiet_period, reconnect_grace))
    if refused:
        raise click.ClickException(f"{refused} line(s) were not sent (see the [not sent] notes)")
    if unanswered:
        raise click.ClickException(f"not every message was answered within {timeout:g} s")


def _read_line() -> bytes | str:
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    line: bytes | str = stream.readline()
    return line


async def _chat(
    home: Home, user: str, timeout: float, quiet: float, grace: float = 10.0
) -> tuple[int, int]:
    """(messages without a reply, lines refused)."""
    from carapace.host.chat_client import ChatSession

    session = ChatSession(home, user, click.echo, reconnect_grace=grace, admin=admin_dispatch())
    await session.open()
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"carapace chat ({session.where}, home {home.root}) — Ctrl-D to quit")
    task = asyncio.get_running_loop().create_task(session.reader())
    try:
        while not task.done():
            line = await asyncio.to_thread(_read_line)
            if not line:
                break
            session.line(line)
            await session.flush()
        deadline = time.monotonic() + timeout
        if interactive:  # replies may come later (to the next client); unsent lines may not
            if session.unacked:
                click.echo(f"[{len(session.unacked)} message(s) not yet taken by the host; "
                           f"waiting up to {timeout:g} s]")  # fmt: skip
            while session.unacked and not task.done() and time.monotonic() < deadline:
                session.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.changed.wait(), deadline - time.monotonic())
            return len(session.unacked), session.refused
        while session.waiting and not task.done() and time.monotonic() < deadline:
            session.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.changed.wait(), deadline - time.monotonic())
        while not task.done():  # let further replies to the last message arrive
            session.changed.clear()
            try:
                await asyncio.wait_for(session.changed.wait(), quiet)
            except TimeoutError:
                break
        return len(session.waiting), session.refused
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await session.close()


@click.group()
def bench() -> None:
    """Benchmarks."""


@bench.command("proxy")
@click.option(
    "--n",
    "n",
    type=click.IntRange(1, 100_000),
    default=300,
    show_default=True,
    help="Calls each way.",
)
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
@click.option(
    "--n",
    "n",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Warm round trips.",
)
@click.option(
    "--floor-n",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Half the two-process floor's round trips (it makes twice this many, in "
    "blocks between the run's own).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--write-docs", is_flag=True, help="Replace its line in docs/benchmarks.md.")
@clean_errors
def roundtrip(home: str | None, n: int, floor_n: int, as_json: bool, write_docs: bool) -> None:
    """Inbound event → delivered reply (mock provider, warm runner), with the two-process
    floor (3 durable commits, 2 inotify wakes) measured in the same run and the ratio."""
    from carapace.bench.host_benches import run_roundtrip

    _quiet_embedded_logs()
    _bench_out([run_roundtrip(n, floor_n)], as_json, write_docs)


def _bench_out(results: list[Any], as_json: bool, write_docs: bool) -> None:
    from carapace.bench.common import write_suite_rows

    for r in results:
        click.echo(json.dumps(r.as_json()) if as_json else r.text())
    if write_docs:
        click.echo(f"wrote {write_suite_rows(results)}", err=True)


def _suite_command(name: str, doc: str, params: list[tuple[str, int | float, str]]) -> None:
    def run(as_json: bool, write_docs: bool, **kw: Any) -> None:
        from carapace.bench import suite

        _quiet_embedded_logs()
        _bench_out([suite.run(name, **kw)], as_json, write_docs)

    run.__doc__ = doc
    cmd: Any = clean_errors(run)
    cmd = click.option(
        "--write-docs", is_flag=True, help="Replace its line in docs/benchmarks.md."
    )(cmd)
    cmd = click.option("--json", "as_json", is_flag=True, help="One JSON object.")(cmd)
    for opt, default, help_text in reversed(params):
        kind: click.IntRange | click.FloatRange = (click.IntRange(1, 1_000_000) if isinstance(default, int)
                                 else click.FloatRange(0.0, 86_400.0))  # fmt: skip
        cmd = click.option(f"--{opt.replace('_', '-')}", opt, type=kind, default=default,
                           show_default=True, help=help_text)(cmd)  # fmt: skip
    bench.command(name)(cmd)


_suite_command("ingest", "Router ingest, one chat (router only), and a live host with an agent "
               "answering (msg/s).", [("n", 2000, "Messages, router only."),
                                      ("n_live", 1000, "Messages, live host.")])  # fmt: skip
_suite_command("burst", "Messages arriving at once to one chat (router only, msg/s).",
               [("n", 2000, "Messages.")])  # fmt: skip
_suite_command(
    "concurrent",
    "N chats × M messages with default settings: time until all are answered.",
    [("chats", 100, "Chats."), ("per_chat", 10, "Messages per chat.")],
)
_suite_command("scale", "Many sessions with long histories: start, idle CPU, forced sweep, "
               "drain, wiring change, longest event-loop stall.",
               [("sessions", 1000, "Active sessions."), ("history", 1000, "Rows each way per "
                "session."), ("idle_s", 61.0, "Idle window (s): from 1 s after the start, "
                "so that 61 s holds the sweep's 60 s safety pass."),
                ("series", 100, "Sessions with a minutely task that has run 3,000 times "
                 "(swept twice).")])  # fmt: skip
_suite_command("delivery", "Waiting replies of one session delivered in one drain (rows/s).",
               [("rows", 2000, "Rows.")])  # fmt: skip
_suite_command("runner", "Runner cold start (p50), start-up breakdown, idle memory.",
               [("n", 10, "Cold starts per backend.")])  # fmt: skip
_suite_command("soak", "What a long-running host keeps per session served: RSS, fds, threads "
               "and watches over many sessions whose runners end.",
               [("sessions", 1000, "Sessions served (one chat each)."),
                ("batch", 25, "New sessions at a time.")])  # fmt: skip
_suite_command("fsyncs", "fsync/fdatasync calls per warm round trip, back to back and 1.2 s "
               "apart (perf stat, children included).",
               [("n", 100, "Round trips back to back.")])  # fmt: skip


@bench.command("all")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per benchmark.")
@click.option("--write-docs", is_flag=True, help="Replace their lines in docs/benchmarks.md.")
@click.option("--quick", is_flag=True, help="Smaller sizes (100 sessions, fewer samples).")
@clean_errors
def bench_all(as_json: bool, write_docs: bool, quick: bool) -> None:
    """Every benchmark of the suite, one after the other, each in an interpreter of its own
    (the proxy bench not included)."""
    import subprocess

    from carapace.bench import suite

    failed = []
    for name in suite.NAMES:
        argv = suite.command(name, quick=quick, as_json=as_json, write_docs=write_docs)
        # one benchmark failing does not lose the others' figures
        if subprocess.run(argv, check=False).returncode != 0:
            click.echo(f"{name}: failed (exit status above)", err=True)
            failed.append(name)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


@bench.command(
    "chaos", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []},
)  # fmt: skip
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_chaos(args: tuple[str, ...]) -> None:
    """N messages over M chats through a real host with random SIGKILLs of runners and of
    the host and an optional disk-full window; prints lost / duplicated / failed-with-notice
    / p99 settle time; exit status 1 on any loss (options: carapace bench chaos --help)."""
    from carapace.bench.chaos import main as chaos_main

    raise SystemExit(chaos_main(list(args), prog="carapace bench chaos"))
