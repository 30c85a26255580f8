"""``carapace admin RESOURCE VERB …``: the operator's command line (NanoClaw's ``ncl``).

The argv is parsed here (ncl rules, see ``client.parse_words``) into a request frame;
the frame goes to the running host over ``data/ncl.sock``, or — when no host runs for
the home — straight to ``dispatch`` over a direct context, with one line on stderr.
Exit codes: 0 ok, 1 command error, 2 transport or usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from carapace.admin.client import HostUnavailable, parse_words, send_frame
from carapace.admin.dispatch import HOST_CALLER, dispatch
from carapace.admin.frames import AdminError
from carapace.admin.helptext import global_help, resource_help
from carapace.admin.registry import commands, resolve, resource
from carapace.admin.render import human
from carapace.cli import debug_enabled, home_option, one_line
from carapace.config import Home
from carapace.errors import CarapaceError
from carapace.timefmt import new_id

Echo = Callable[[str], None]


def _out(text: str) -> None:
    click.echo(text)


def _err(text: str) -> None:
    click.echo(text, err=True)


def run_admin(
    home: Home, words: list[str], as_json: bool, out: Echo = _out, err: Echo = _err
) -> int:
    """Run one admin command line; returns the exit code."""
    for word in words:
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            shown = word.encode("utf-8", "backslashreplace").decode()[:60]
            return _show_error(
                "invalid-args", f"argument {shown!r} is not valid UTF-8", as_json, out, err
            )
    try:
        positionals, args = parse_words(words)
    except AdminError as exc:
        return _show_error(exc.code, str(exc), as_json, out, err)
    wants_help = args.pop("help", None) is True
    command = "-".join(positionals)
    if not positionals or (wants_help and resource(positionals[0]) is None):
        return _show(global_help(), as_json, out)
    res = resource(positionals[0])
    if res is not None and (wants_help or command in (res.name, f"{res.name}-help")):
        _show(resource_help(res), as_json, out)
        return 2 if command == res.name and not wants_help else 0
    if command == "help":
        return _show(global_help(), as_json, out)
    if positionals[0] == "tasks" and isinstance(args.get("script"), str):  # --script FILE
        try:
            args["script"] = Path(args["script"]).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            return _show_error("invalid-args", f"--script: {exc}", as_json, out, err)
    frame = {"id": new_id("cli"), "command": command, "args": args}
    try:
        resp = send_frame(home.admin_socket, frame)
    except HostUnavailable:
        direct = _direct(home, frame, err)
        if direct is None:
            return 2
        resp = direct
    except AdminError as exc:
        return _show_error(exc.code, str(exc), as_json, out, err)
    if resp.get("ok"):
        return _show(resp.get("data"), as_json, out)
    error = resp.get("error") if isinstance(resp.get("error"), dict) else {}
    assert isinstance(error, dict)
    return _show_error(
        str(error.get("code", "handler-error")), str(error.get("message", "")), as_json, out, err
    )


def _direct(home: Home, frame: dict[str, Any], err: Echo) -> dict[str, Any] | None:
    from carapace.admin.direct import direct_context

    try:
        ctx = direct_context(home)
    except CarapaceError as exc:
        err(f"error (transport-error): {exc}")
        return None
    with ctx:
        resolved = resolve(frame["command"])
        if resolved is not None and resolved[0] in commands():
            verb = commands()[resolved[0]][1]
            how = "applied" if verb.mutates else "read"
            err(f"no host running for {home.root}; {how} directly")
        if not debug_enabled():  # the failure is one line below; no traceback on the terminal
            logging.getLogger("carapace.admin.dispatch").setLevel(logging.CRITICAL)
        return dispatch(ctx, frame, HOST_CALLER)


def _show(data: Any, as_json: bool, out: Echo) -> int:
    out(json.dumps(data, ensure_ascii=False, indent=2) if as_json else human(data))
    return 0


def _show_error(code: str, message: str, as_json: bool, out: Echo, err: Echo) -> int:
    if as_json:
        out(json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False))
    else:
        err(f"error ({code}): {one_line(message)}")
    return 2 if code == "transport-error" else 1


@click.command(
    "admin",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the response data as JSON.")
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
def admin(home: str | None, as_json: bool, words: tuple[str, ...]) -> None:
    """Every operator task: agent groups, chats, wirings, users, approvals, sessions.

    \b
    carapace admin [--home DIR] [--json] RESOURCE VERB [ID] [--option VALUE]…
    (`carapace admin help` lists the resources.)
    """
    code = run_admin(Home.resolve(home), list(words), as_json)
    sys.exit(code)
