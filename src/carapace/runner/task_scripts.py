"""Pre-task scripts (spec/runner.md §11.3): a task's ``script`` decides whether to wake the agent.

Before a claimed ``task`` row whose content has a non-empty ``script`` is given to the
agent, the script runs with ``bash -c`` in the agent group's folder, exactly as the ``bash``
tool runs a command: the same environment (``Workspace.bash_env``: nothing of the runner's
own environment), the same per-command limits (``limits.child_preexec``), a
``SCRIPT_TIMEOUT_S`` time limit, and afterwards every process it left behind is killed
(``procs.kill_descendants``). stdout/stderr are capped at ``OUTPUT_CAP`` bytes each.

A script is code the agent wrote, so it obeys the group's bash policy: when bash is off for
the group (``bash: off``, or ``sandboxed`` in a runner without a sandbox) the script is not
run, the task is not woken, the result row carries the reason and a notice goes to the
task's chat (``SCRIPT_REFUSED``).

* exit 0 and the last stdout line is JSON ``{"wakeAgent": bool, "data": ...}``: wake when
  ``wakeAgent`` is true, with ``data`` as the task's ``scriptOutput``;
* exit 0 and any other output: wake, with the (trimmed) stdout as ``scriptOutput``
  (NanoClaw skipped the task here);
* non-zero exit, timeout or a failure to start: don't wake.

Every run is reported to the host as an outbound ``system`` row
``{"action": "task_script_result", "taskId", "wakeAgent", "exitCode", "timedOut",
"error", "stdout", "stderr", "durationMs"}``; the host records it in
``carapace_task_runs`` (``skipped`` when the agent was not woken). Skipped rows are
completed by the caller, so a recurring series moves on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from carapace.jsonutil import dumps
from carapace.log import get_logger
from carapace.record import record, replace
from carapace.runner import procs
from carapace.runner.inbound import InRow
from carapace.timefmt import new_id

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import IO, Any, Protocol

    class _Writer(Protocol):
        def write(
            self, *, id: str, kind: str, content: dict[str, Any], now: datetime | None = None
        ) -> int: ...


logger = get_logger(__name__)

MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"

SCRIPT_TIMEOUT_S = 30.0
OUTPUT_CAP = 1024 * 1024
REPORT_CAP = 4000
SCRIPT_REFUSED = (
    "not run: pre-task scripts obey the bash setting, and bash is off for this agent group"
)


@record(frozen=True)
class ScriptResult:
    wake: bool
    data: Any = None
    exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    duration_ms: int = 0


def _read(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read(OUTPUT_CAP).decode("utf-8", errors="replace")


def run_script(
    script: str,
    cwd: Path,
    *,
    timeout: float = SCRIPT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> ScriptResult:
    """Run one script and decide (see the module docstring). ``env`` is its whole
    environment (minimal when None: never the runner's own)."""
    started = time.monotonic()
    env = dict(env) if env is not None else {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8"}
    import signal  # here, not at the runner's start: most turns run no script
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=str(cwd) if cwd.is_dir() else None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            return ScriptResult(False, error=f"cannot start bash: {exc}")
        timed_out = False
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            code = None
        procs.kill_descendants()  # background jobs, setsid'd children: nothing outlives it
        stdout, stderr = _read(out), _read(err)
    ms = int((time.monotonic() - started) * 1000)

    def result(wake: bool, data: Any = None, error: str | None = None) -> ScriptResult:
        return ScriptResult(wake, data, code, timed_out, error, stdout, stderr, ms)

    if timed_out:
        return result(False, error=f"timed out after {timeout:.0f} s")
    if code != 0:
        return result(False, error=f"exit status {code}")
    text = stdout.strip()
    last = text.splitlines()[-1] if text else ""
    try:
        doc = json.loads(last) if last else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("wakeAgent"), bool):
        return result(bool(doc["wakeAgent"]), doc.get("data"))
    return result(True, text or None)


def has_script(row: InRow) -> bool:
    """Whether ``row`` is a task with a pre-task script to run."""
    return _script_of(row) is not None


def _script_of(row: InRow) -> str | None:
    if row.kind != "task":
        return None
    script = row.data.get("script")
    return script if isinstance(script, str) and script.strip() else None


def apply_pre_task_scripts(
    rows: list[InRow],
    *,
    cwd: Path,
    outbound: _Writer,
    now: Callable[[], datetime],
    heartbeat: Callable[[], None],
    timeout: float = SCRIPT_TIMEOUT_S,
    allowed: bool = True,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
    notify: Callable[[InRow, str], None] | None = None,
) -> tuple[list[InRow], list[InRow]]:
    """Run the scripts of the task rows, one at a time. Returns (keep, skipped); a kept
    task row carries ``scriptOutput`` in its content (in memory only). ``allowed`` False
    (bash is off for the group): no script runs, each such task is skipped with
    ``SCRIPT_REFUSED`` and ``notify(row, text)`` is called."""
    keep: list[InRow] = []
    skipped: list[InRow] = []
    for row in rows:
        script = _script_of(row)
        if script is None:
            keep.append(row)
            continue
        if allowed:
            logger.info("running script for task %s", row.id)
            heartbeat()
            result = run_script(script, cwd, timeout=timeout, env=env, preexec=preexec)
            heartbeat()
        else:
            logger.warning("task %s: script %s", row.id, SCRIPT_REFUSED)
            result = ScriptResult(False, error=SCRIPT_REFUSED)
            if notify is not None:
                notify(row, f"Scheduled task {row.id} was not run: its pre-task script was "
                            f"{SCRIPT_REFUSED}.")  # fmt: skip
        if result.stderr:
            logger.info("task %s script stderr: %s", row.id, result.stderr[:500])
        outbound.write(
            id=new_id("sys", now()),
            kind="system",
            content={
                "action": "task_script_result",
                "taskId": row.id,
                "seriesId": row.series_id or row.id,
                "wakeAgent": result.wake,
                "exitCode": result.exit_code,
                "timedOut": result.timed_out,
                "error": result.error,
                "stdout": result.stdout[:REPORT_CAP],
                "stderr": result.stderr[:REPORT_CAP],
                "durationMs": result.duration_ms,
            },
            now=now(),
        )
        if not result.wake:
            logger.info("task %s skipped by its script (%s)", row.id, result.error or "wakeAgent")
            skipped.append(row)
            continue
        data = dict(row.data)
        data["scriptOutput"] = result.data
        keep.append(replace(row, content=dumps(data)))
    return keep, skipped
