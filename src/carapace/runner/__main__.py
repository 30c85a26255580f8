"""``python -m carapace.runner --session-dir DIR --agent-dir DIR [--provider NAME] [--idle-exit S]``.

Serves one session until SIGTERM (or ``--idle-exit`` seconds without work). Logs go to
stderr. Exit codes: 0 clean stop, 1 fatal error, 2 bad arguments.
"""

from __future__ import annotations

import gc
import time

STARTED_AT = time.time()  # before the imports below: the start-up line splits the time
STARTED_MONO = time.perf_counter()
# No collection while the runner imports and sets up (~3 ms of a cold start went to the
# collector walking the new modules' objects, issue 19); frozen and re-enabled once the
# runner is set up. Only as the program: importing this module elsewhere changes nothing.
_GC_HELD = __name__ == "__main__" and gc.isenabled()
if _GC_HELD:
    gc.disable()


import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from carapace import log  # noqa: E402
from carapace.limits import limit_own_processes, limits_of  # noqa: E402
from carapace.runner import lifeline  # noqa: E402
from carapace.runner.config import RunnerConfig  # noqa: E402
from carapace.runner.loop import Runner  # noqa: E402
from carapace.runner.procs import harden_self  # noqa: E402
from carapace.runner.setup import build_mcp, build_provider, build_workspace  # noqa: E402
from carapace.safefs import remove_tree  # noqa: E402

logger = log.get_logger("carapace.runner")

# option → (attribute, type) of the command line the host writes (``--name value`` pairs)
_OPTIONS: dict[str, tuple[str, type[Path] | type[float] | type[str]]] = {
    "--session-dir": ("session_dir", Path),
    "--agent-dir": ("agent_dir", Path),
    "--provider": ("provider", str),
    "--idle-exit": ("idle_exit", float),
    "--log-level": ("log_level", str),
}


def parse_args(argv: list[str] | None = None) -> SimpleNamespace:
    """The command line. The host's form (``--option value`` pairs, or the session folder
    alone first) is read here; anything else (``--help``, ``--opt=value``, a bad value, a
    missing option) goes to ``argparse``, for its messages and exit code 2. ``argparse``
    is not imported otherwise: with the ``shutil`` its help formatter loads, it cost about
    4 ms of every runner's start (issue 19)."""
    given = sys.argv[1:] if argv is None else argv
    return _parse_plain(given) or _parse_argparse(given)


def _parse_plain(argv: list[str]) -> SimpleNamespace | None:
    out: dict[str, object] = {"session_dir": None, "agent_dir": None, "provider": None,
                              "idle_exit": None, "log_level": "INFO"}  # fmt: skip
    positional: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item in _OPTIONS:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None
            name, kind = _OPTIONS[item]
            try:
                out[name] = kind(argv[i + 1])
            except ValueError:
                return None
            i += 2
        elif item.startswith("-") or positional:
            return None
        else:
            positional.append(item)
            i += 1
    if out["session_dir"] is None and positional:
        out["session_dir"] = Path(positional[0])
    if out["session_dir"] is None or out["agent_dir"] is None:
        return None
    return SimpleNamespace(**out)


def _parse_argparse(argv: list[str]) -> SimpleNamespace:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m carapace.runner", description="Serve one carapace session."
    )
    parser.add_argument("session_dir_pos", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--session-dir", type=Path, help="the session folder (inbound.db …)")
    parser.add_argument("--agent-dir", type=Path, help="the agent group's folder")
    parser.add_argument("--provider", help="override the provider (mock, anthropic, openai)")
    parser.add_argument(
        "--idle-exit", type=float, default=None, help="exit after this many seconds without work"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    args.session_dir = args.session_dir or args.session_dir_pos
    if args.session_dir is None:
        parser.error("--session-dir is required")
    if args.agent_dir is None:
        parser.error("--agent-dir is required")
    return SimpleNamespace(**{k: v for k, v in vars(args).items() if k != "session_dir_pos"})


def main(argv: list[str] | None = None) -> int:
    imported = time.perf_counter()
    lifeline.watch()  # first: the orphan of a killed sandbox wrapper exits before any work
    harden_self()  # before anything: agent commands must never read this process
    args = parse_args(argv)
    os.umask(0o077)  # transcripts, outbox files, the agent's files: owner-only
    log.basic_config(
        level=log.level_of(str(args.log_level)),
        stream=sys.stderr,
        fmt="%(asctime)s %(levelname)s [runner %(name)s] %(message)s",
    )
    session_dir: Path = args.session_dir.resolve()
    agent_dir: Path = args.agent_dir.resolve()
    if not (session_dir / "inbound.db").is_file():
        logger.error("no inbound.db in %s", session_dir)
        return 1
    config = RunnerConfig.load(
        session_dir, agent_dir, provider=args.provider, idle_exit_s=args.idle_exit
    )
    limits = limits_of(config.settings)
    if limit_own_processes(limits):  # (in a user namespace of its own only: bwrap's)
        logger.info("processes bounded at %d in this sandbox", limits.processes)
    provider, error = build_provider(config)
    workspace = build_workspace(config)
    mcp = build_mcp(config)
    log.sync()  # a provider's SDK loaded `logging`: its lines take the runner's format
    runner = Runner(config, provider, provider_error=error, workspace=workspace, mcp=mcp)
    runner.install_signal_handlers()
    runner.startup = (STARTED_AT, imported - STARTED_MONO, time.perf_counter() - imported)
    if _GC_HELD:
        gc.freeze()  # the start-up objects live as long as the process: never scanned again
        gc.enable()
    try:
        return runner.run()
    except Exception:
        logger.exception("fatal error in session %s", config.session_id)
        return 1
    finally:
        if workspace is not None:
            # the runner's own temp folder goes with it: unsandboxed, a folder in the TMPDIR
            # the host made for it (removed by the host too, after a kill); in bwrap the
            # sandbox's /tmp is a tmpfs that goes anyway
            remove_tree(workspace.policy.tmp_dir, "temp folder")


if __name__ == "__main__":
    sys.exit(main())
