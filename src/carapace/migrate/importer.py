"""``migrate-v1``: import a NanoClaw v1 install into a carapace home (spec/v1-migration.md).

Steps, in order: groups (agent groups, chats, wirings, destinations, container configs,
folders, sessions), Claude state, tasks, task run logs, chat history, owner; every v1 row
ends up in the :class:`~carapace.migrate.report.Report`. Each group is imported in one
transaction. What was imported is recorded in ``carapace_v1_imports``, so a re-run adds only
what is new and never touches (or re-creates) a row imported before.

A dry run imports into a scratch copy of the home's central DB in a temporary folder, so the
report is the real one, and the home itself is not touched (no file is created or opened
for writing).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from carapace.bootstrap import open_home
from carapace.config import Home
from carapace.errors import CarapaceError, ConfigError, MigrationError
from carapace.migrate.context import ImportContext
from carapace.migrate.doctor import open_readonly
from carapace.migrate.groups import import_groups, import_sessions
from carapace.migrate.history import (
    import_messages,
    import_owner,
    import_run_logs,
    import_tasks,
    report_dropped,
)
from carapace.migrate.report import Report
from carapace.migrate.v1source import V1Source, open_v1
from carapace.timefmt import utcnow

logger = logging.getLogger(__name__)


def _valid_tz(name: str | None) -> str | None:
    if not name:
        return None
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None
    return name


def v1_timezone(src: V1Source, fallback: str) -> str:
    """v1's ``TIMEZONE``: ``.env`` TZ when valid, else the given zone (spec §1.8)."""
    return _valid_tz(src.env.get("TZ")) or fallback


def host_running(home: Home) -> bool:
    try:
        pid = int(home.pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _copy_central(home: Home, scratch: Home) -> None:
    """A consistent copy of the home's central DB (read-only open, SQLite backup API)."""
    scratch.data_dir.mkdir(parents=True, exist_ok=True)
    if home.config_file.exists():
        shutil.copy2(home.config_file, scratch.config_file)
    if not home.central_db.exists():
        return
    src = open_readonly(home.central_db)
    dst = sqlite3.connect(str(scratch.central_db))
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def migrate_v1(
    source: Path, home: Home, *, dry_run: bool = False, now: datetime | None = None
) -> Report:
    """Import the v1 install at ``source`` into ``home`` and return the report."""
    now = now or utcnow()
    src = open_v1(source)
    try:
        if dry_run:
            with tempfile.TemporaryDirectory(prefix="carapace-dry-run-") as tmp:
                scratch = Home(Path(tmp) / "home")
                _copy_central(home, scratch)
                report = _run(src, scratch, now, files_home=home)
                report.home = str(home.root)
                report.dry_run = True
                return report
        if host_running(home):
            raise ConfigError(
                f"a carapace host is running on {home.root}; stop it before importing"
            )
        home.load_settings()  # a bad carapace.toml is refused before anything is written
        return _run_all_or_nothing(src, home, now)
    finally:
        src.close()


def _run_all_or_nothing(src: V1Source, home: Home, now: datetime) -> Report:
    """The import, or — when it fails half-way or imports nothing — no change at all."""
    from carapace.migrate.rollback import Snapshot

    with Snapshot(home) as snap:
        try:
            report = _run(src, home, now, files_home=None)
        except CarapaceError as exc:
            raise MigrationError(f"import failed; the home was left as it was: {exc}")
        except (sqlite3.Error, OSError, ValueError, UnicodeError) as exc:
            raise MigrationError(
                f"import failed ({type(exc).__name__}: {exc}); the home was left as it was"
            )
        if report.fatal:
            report.fatal += "; the home was left as it was"
        else:
            snap.keep()
    return report


def _run(src: V1Source, home: Home, now: datetime, *, files_home: Home | None) -> Report:
    report = Report(source=str(src.root or src.db_path), home=str(home.root))
    conn, _ran = open_home(home)
    try:
        tz = _valid_tz(home.load_settings().timezone) or "UTC"
        ctx = ImportContext(
            src=src, home=home, conn=conn, report=report, now=now, timezone=tz,
            v1_timezone=v1_timezone(src, tz), write_files=files_home is None,
            files_home=files_home,
        )  # fmt: skip
        try:
            _steps(ctx)
        except CarapaceError as exc:
            report.fatal = str(exc)
            raise
        _general_notes(ctx)
    finally:
        conn.close()
    return report


def _steps(ctx: ImportContext) -> None:
    from carapace.ops.progress import progress

    with progress("migrate-v1", 7) as advance:  # a bar on a terminal only
        import_groups(ctx)
        advance("groups")
        import_sessions(ctx)
        advance("sessions")
        tasks = import_tasks(ctx)
        advance("tasks")
        import_run_logs(ctx, tasks)
        advance("task runs")
        import_messages(ctx)
        advance("messages")
        report_dropped(ctx)
        advance("dropped")
        import_owner(ctx)
        advance("owner")
    groups = ctx.src.groups()
    if groups and not ctx.imported:
        ctx.report.fatal = "no v1 group could be imported"


def _general_notes(ctx: ImportContext) -> None:
    r = ctx.report
    if ctx.src.env.get("TZ") and ctx.v1_timezone != ctx.timezone:
        r.need(
            "time zone",
            f"v1 ran in {ctx.v1_timezone}, this home schedules in {ctx.timezone}",
            f"set timezone = {ctx.v1_timezone!r} in carapace.toml if cron times should not move",
        )
    if any(e.source == "scheduled_tasks" for e in r.entries):
        r.note(
            "Tasks now run inside the chat's ongoing conversation; v1's context_mode "
            "'isolated' (a fresh conversation per run) has no equivalent."
        )
    if ctx.imported:
        r.note(
            "Trigger words: v1 matched the trigger only at the start of a message, ignoring "
            "case; an imported 'pattern' wiring matches it anywhere in the text, "
            "case-sensitively."
        )
        r.note(
            "Messages that don't trigger the agent are kept as context for its next turn "
            "(ignored_message_policy 'accumulate'), as v1 did."
        )
        r.note(
            "Chat history is kept in the carapace_v1_messages table; it is not replayed "
            "to the agent."
        )
