"""``carapace doctor``: what in a home (carapace's or a NanoClaw v2 folder) carapace cannot use.

Read-only: the central DB and the session DBs are opened ``mode=ro`` and nothing is
repaired. Findings are ``error`` (something is broken: carapace will fail on it),
``warning`` (works, but not as the user may expect, or unsafe) or ``info``.
"""

from __future__ import annotations

import shlex
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from carapace.config import Home
from carapace.db.migrations import MIGRATIONS
from carapace.errors import CarapaceError, ValidationError
from carapace.jsonutil import loads_or
from carapace.migrate.mapping import KNOWN_CHANNELS
from carapace.perms import wide_entries

Level = Literal["error", "warning", "info"]
SANDBOXED_BACKENDS = ("bwrap", "docker", "podman")


@dataclass(frozen=True)
class Finding:
    level: Level
    code: str
    subject: str
    message: str


@dataclass
class DoctorReport:
    home: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, code: str, subject: str, message: str) -> None:
        self.findings.append(Finding(level, code, subject, message))

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.level == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level == "warning")

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "findings": [asdict(f) for f in self.findings],
        }

    def render(self) -> str:
        lines = [f"carapace doctor: {self.home}"]
        for f in self.findings:
            lines.append(f"  {f.level.upper():7} {f.code}: {f.subject}: {f.message}")
        verdict = "OK" if self.ok else "PROBLEMS"
        lines.append(f"{verdict}: {self.errors} error(s), {self.warnings} warning(s)")
        return "\n".join(lines)


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open without creating or changing any file.

    ``mode=ro`` on a WAL database still creates ``-wal``/``-shm`` files; when there is no
    ``-wal`` (the DB was closed cleanly) there is nothing in it to miss, so the file is
    opened ``immutable``. With a ``-wal`` present (a host is running) ``mode=ro`` is used.
    """
    p = path.resolve().as_posix()
    wal = Path(f"{path}-wal")
    uri = f"file:{p}?mode=ro" if wal.exists() else f"file:{p}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _has(conn: sqlite3.Connection, table: str) -> bool:
    q = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
    return conn.execute(q, (table,)).fetchone() is not None


def diagnose(home: Home) -> DoctorReport:
    rep = DoctorReport(str(home.root))
    if not home.central_db.exists():
        rep.add("error", "no-central-db", str(home.central_db), "missing; run `carapace init`")
        return rep
    if not _central_whole(home, rep):
        return rep
    try:
        conn = open_readonly(home.central_db)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        rep.add("error", "central-db-unreadable", str(home.central_db), str(exc))
        return rep
    try:
        _checks(home, conn, rep)
    except sqlite3.Error as exc:
        rep.add("error", "central-db-unreadable", str(home.central_db), str(exc))
    finally:
        conn.close()
    _storage(home, rep)
    from carapace.ops.doctor import ops_checks

    ops_checks(home, rep)
    _nanoclaw_rewrites(home, rep)
    return rep


def _central_whole(home: Home, rep: DoctorReport) -> bool:
    """An empty or truncated ``v2.db`` is reported (and nothing else is read from it)."""
    from carapace.host.db_check import header_problem

    subject = str(home.central_db)
    try:
        size = home.central_db.stat().st_size
        problem = header_problem(home.central_db)
    except (OSError, CarapaceError) as exc:
        rep.add("error", "central-db-unreadable", subject, str(exc))
        return False
    if size == 0:
        rep.add("error", "central-db-empty", subject,
                "0 bytes (truncated?): `carapace run` refuses it; restore it from a backup "
                "(`carapace restore`), or move it away to start a new home")  # fmt: skip
        return False
    if problem is not None and not Path(f"{home.central_db}-wal").exists():
        # (with a -wal a host runs: a checkpoint may be growing the file right now)
        rep.add("error", "central-db-corrupt", subject,
                f"{problem}; restore it from a backup (`carapace restore`)")  # fmt: skip
        return False
    return True


MIN_FREE_BYTES = 16 * 1024 * 1024


def _storage(home: Home, rep: DoctorReport) -> None:
    """The home must be writable and its disk must have room, or messages cannot be accepted."""
    import os
    import shutil
    import tempfile

    data = home.central_db.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=data)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        rep.add(
            "error", "home-unwritable", str(data), f"cannot create a file: {exc.strerror or exc}"
        )
    try:
        free = shutil.disk_usage(data).free
    except OSError as exc:
        rep.add(
            "error", "disk-unknown", str(data), f"cannot read free space: {exc.strerror or exc}"
        )
        return
    if free < MIN_FREE_BYTES:
        rep.add(
            "error",
            "disk-full",
            str(data),
            f"only {free // 1024} KiB free (need at least {MIN_FREE_BYTES // (1024 * 1024)} MiB)",
        )


def _nanoclaw_rewrites(home: Home, rep: DoctorReport) -> None:
    """Which files NanoClaw v2 would rewrite or delete if it ran this home (issue 18)."""
    from carapace.host.groupfiles import nanoclaw_rewrites

    try:
        found = nanoclaw_rewrites(home)
    except (OSError, CarapaceError) as exc:
        rep.add("warning", "nanoclaw-rewrites", "groups/", f"not checked: {exc}")
        return
    for path, what in found:
        lost = "would be lost" in what
        rep.add("warning" if lost else "info", "nanoclaw-rewrites", path, f"NanoClaw would: {what}")


def _checks(home: Home, conn: sqlite3.Connection, rep: DoctorReport) -> None:
    _ledger(conn, rep)
    if not _has(conn, "agent_groups"):
        rep.add("error", "no-schema", "v2.db", "has no agent_groups table")
        return
    _wirings(conn, rep)
    _groups(home, conn, rep)
    _sessions(home, conn, rep)
    _chats(conn, rep)
    _roles(conn, rep)
    _secrets(home, rep)
    _modes(home, rep)
    _channel_states(home, rep, conn)


def _ledger(conn: sqlite3.Connection, rep: DoctorReport) -> None:
    if not _has(conn, "schema_version"):
        rep.add("warning", "no-ledger", "schema_version", "missing; every migration will run")
        return
    known = {m.name for m in MIGRATIONS}
    applied = [r[0] for r in conn.execute("SELECT name FROM schema_version ORDER BY version")]
    for name in applied:
        if name not in known:
            rep.add(
                "warning", "unknown-migration", name,
                "applied by something carapace does not know (a NanoClaw skill?); the tables "
                "it made are left alone and unused",
            )  # fmt: skip
    missing = [m.name for m in MIGRATIONS if m.name not in set(applied)]
    if missing:
        rep.add(
            "info", "pending-migrations", "v2.db", "applied at next start: " + ", ".join(missing)
        )


_NULL_READ = {
    "engage_mode": "'mention' (NanoClaw never engages such a wiring)",
    "sender_scope": "'all'",
    "ignored_message_policy": "'drop'",
    "session_mode": "'shared'",
}


def _wirings(conn: sqlite3.Connection, rep: DoctorReport) -> None:
    cols = {r[1] for r in conn.execute("PRAGMA table_info(messaging_group_agents)")}
    for col, reading in _NULL_READ.items():
        if col not in cols:
            continue
        for r in conn.execute(f"SELECT id FROM messaging_group_agents WHERE {col} IS NULL"):
            rep.add("warning", "null-engage", f"wiring {r[0]}", f"{col} is NULL; read as {reading}")
        if col == "engage_mode" and "engage_pattern" in cols:
            q = (
                "SELECT id FROM messaging_group_agents WHERE engage_mode='pattern' "
                "AND (engage_pattern IS NULL OR engage_pattern='')"
            )
            for r in conn.execute(q):
                rep.add("warning", "null-engage", f"wiring {r[0]}", "pattern mode with no pattern")


def _groups(home: Home, conn: sqlite3.Connection, rep: DoctorReport) -> None:
    has_cfg = _has(conn, "container_configs")
    cfg_cols = {r[1] for r in conn.execute("PRAGMA table_info(container_configs)")}
    backend = _sandbox_backend(home, rep)
    for g in conn.execute("SELECT id, folder FROM agent_groups ORDER BY folder"):
        subject = f"agent group {g['id']} ({g['folder']})"
        if not home.group_dir(g["folder"]).is_dir():
            rep.add("warning", "no-group-folder", subject, f"groups/{g['folder']}/ is missing")
        row = None
        if has_cfg:
            row = conn.execute(
                "SELECT * FROM container_configs WHERE agent_group_id=?", (g["id"],)
            ).fetchone()
        if row is None:
            rep.add("warning", "no-container-config", subject, "no container_configs row; "
                    "defaults are used until one is written")  # fmt: skip
            continue
        settings = loads_or(row["settings"], {}) if "settings" in cfg_cols else {}
        if not isinstance(settings, dict):
            rep.add("error", "bad-settings", subject, "container_configs.settings is not an object")
            continue
        group_backend = _group_sandbox(home, row, settings, backend, subject, rep)
        _group_provider(row, subject, rep)
        if settings.get("bash") == "allowed" and group_backend not in SANDBOXED_BACKENDS:
            rep.add(
                "warning", "bash-unsandboxed", subject,
                f"bash is allowed but the runner backend is {group_backend!r} (no sandbox): "
                "the agent can run any command as you",
            )  # fmt: skip


def _group_provider(row: sqlite3.Row, subject: str, rep: DoctorReport) -> None:
    """A provider whose SDK is missing: every message of the group would fail (the runner
    says why; it never substitutes another provider)."""
    from carapace.runner.providers import unavailable_reason

    name = row["provider"] if "provider" in row.keys() else None  # noqa: SIM118
    why = unavailable_reason(name) if isinstance(name, str) else None
    if why is not None:
        rep.add("error", "provider-unavailable", subject, why)


def _sandbox_backend(home: Home, rep: DoctorReport) -> str:
    """The host's runner backend as ``carapace run`` would resolve it (docs/sandbox.md)."""
    from carapace.host.client import check_default_provider
    from carapace.sandbox.bwrap import resolve_backend

    try:
        settings = home.load_settings()
        check_default_provider(settings.default_provider)
    except CarapaceError as exc:
        rep.add("error", "bad-config", str(home.config_file), str(exc))
        return "subprocess"
    try:
        from carapace.web.config import web_settings

        web_settings(settings, home)
    except CarapaceError as exc:  # `carapace run` refuses to start with it
        rep.add("error", "bad-config", str(home.config_file), str(exc))
    try:
        name, _why = resolve_backend(settings.runner_backend, settings.bwrap)
    except CarapaceError as exc:  # the host will refuse to start
        rep.add("error", "runner-backend", str(home.config_file), str(exc))
        return settings.runner_backend
    return name  # an unisolated runner matters where bash is allowed: see bash-unsandboxed


def _group_sandbox(
    home: Home, row: sqlite3.Row, settings: dict[str, Any], backend: str, subject: str,
    rep: DoctorReport,
) -> str:  # fmt: skip
    """The group's effective backend; bad ``settings.sandbox`` and refused mounts reported."""
    from carapace.sandbox.mounts import MountRequest, load_allowlist, validate_mount
    from carapace.sandbox.policy import group_sandbox

    try:
        choice = group_sandbox(settings)
    except CarapaceError as exc:
        rep.add("error", "bad-sandbox", subject, str(exc))
        choice = "auto"
    try:
        requests = loads_or(row["additional_mounts"], [])
    except IndexError:  # an old container_configs without the column
        requests = []
    if isinstance(requests, list) and requests:
        try:
            roots = load_allowlist(home.root)
        except CarapaceError:
            roots = []
        for raw in requests:
            try:
                if not roots:
                    raise ValidationError("no mount_allowlist in carapace.toml")
                validate_mount(MountRequest.from_json(raw), roots, home=home.root)
            except ValidationError as exc:
                rep.add("warning", "mount-refused", subject, f"additional mount refused: {exc}")
    _group_network(settings, subject, rep)
    if choice == "auto":
        return backend
    return "subprocess" if choice == "none" else choice


def _secrets(home: Home, rep: DoctorReport) -> None:
    """The provider-key file the host's egress proxy reads: owner-only or refused."""
    from carapace.proxy.keys import SECRETS_FILE, read_secrets_file

    try:
        read_secrets_file(home.root / SECRETS_FILE)
    except CarapaceError as exc:
        rep.add("error", "secrets-file", str(home.root / SECRETS_FILE), str(exc))


def _channel_states(home: Home, rep: DoctorReport, conn: sqlite3.Connection) -> None:
    """An adapter the host recorded as failed (e.g. a revoked bot token) is an error; chats
    on a channel whose adapter has no credentials are a warning (e.g. a NanoClaw home's
    Telegram chats before `channels add telegram`)."""
    from carapace.channels.registry import list_channels, read_states

    types = {str(r[0]) for r in conn.execute("SELECT DISTINCT channel_type FROM messaging_groups")}
    try:
        infos = list_channels(home)
    except CarapaceError:
        infos = []  # an unreadable secrets file is reported by _secrets
    for info in infos:
        if info.channel_type in types and not info.configured:
            rep.add("warning", "channel-not-configured", f"channel {info.channel_type}",
                    f"chats exist but {', '.join(info.missing)} is neither in secrets.env nor "
                    f"in this environment; `carapace channels add {info.channel_type}`")  # fmt: skip
    for channel_type, st in sorted(read_states(home).items()):
        if st.get("state") == "failed":
            rep.add("error", "channel-failed", f"channel {channel_type}",
                    f"{st.get('detail') or 'failed'} (since {st.get('at')}); fix it and "
                    f"`carapace channels add {channel_type}`, then restart the host")  # fmt: skip


def _group_network(settings: dict[str, Any], subject: str, rep: DoctorReport) -> None:
    """``network: true`` is reported: direct network through slirp4netns (never the host's
    loopback), or no start at all when slirp4netns is missing."""
    from carapace.sandbox import netns
    from carapace.sandbox.policy import group_network

    if not group_network(settings):
        return
    if netns.slirp_path() is None:
        rep.add("error", "network-unavailable", subject,
                "network: true but slirp4netns is not installed: the group's runners will "
                "not start (apt install slirp4netns)")  # fmt: skip
    else:
        rep.add("info", "network-granted", subject,
                "network: true: the sandbox has direct network through slirp4netns "
                "(not the host's loopback); model calls still go through the host's proxy")  # fmt: skip


def _sessions(home: Home, conn: sqlite3.Connection, rep: DoctorReport) -> None:
    q = "SELECT id, agent_group_id, COALESCE(status, 'active') AS status FROM sessions"
    for s in conn.execute(q):
        subject = f"session {s['id']}"
        folder = home.sessions_dir / s["agent_group_id"] / s["id"]
        if not folder.is_dir():
            level: Level = "warning" if s["status"] == "active" else "info"
            rep.add(level, "no-session-folder", subject, f"{folder} is missing")
            continue
        for name in ("inbound.db", "outbound.db"):
            _session_db(folder / name, subject, rep)


def _session_db(path: Path, subject: str, rep: DoctorReport) -> None:
    """A session DB that is missing, unreadable, truncated or corrupted is reported; the file
    is not trusted (``host/db_check.py``: read-only, bounded, outbound.db schema-checked)."""
    from carapace.host.db_check import Unchecked, failed_messages, session_db_problem

    name = path.name
    if not path.exists() and not path.is_symlink():
        rep.add("warning", "no-session-db", subject, f"{name} is missing")
        return
    try:
        problem = session_db_problem(path)
    except Unchecked as exc:
        rep.add("warning", "session-db-unchecked", subject, f"{name}: not checked: {exc}")
        return
    except OSError as exc:
        rep.add("error", "session-db-unreadable", subject, f"{name}: {exc.strerror or exc}")
        return
    if problem is None:
        failed = failed_messages(path) if name == "inbound.db" else 0
        if failed:
            rep.add("warning", "failed-messages", subject,
                    f"{failed} message(s) ended failed (the runner gave up on them, or "
                    "crashed on them max_tries times); they are not retried")  # fmt: skip
        return
    code = "session-db-corrupt" if _is_damage(problem) else "session-db-unreadable"
    rep.add("error", code, subject, f"{name}: {problem}")


def _is_damage(problem: str) -> bool:
    words = ("truncated", "malformed", "integrity check", "corrupt")
    return any(w in problem for w in words)


MAX_MODE_FINDINGS = 20


def _modes(home: Home, rep: DoctorReport) -> None:
    """Anything in the home that other OS users may read or write (issue 12 item 11)."""
    wide, capped = wide_entries(home.root)
    central = str(home.central_db)
    for path, mode in wide[:MAX_MODE_FINDINGS]:
        is_dir = path.is_dir() and not path.is_symlink()
        level: Level = "error" if str(path).startswith(central) or path == home.root else "warning"
        rep.add(level, "wide-mode", str(path),
                f"mode {mode:04o} lets other users {'list' if is_dir else 'read'} it; fix: "
                f"chmod {'700' if is_dir else '600'} {shlex.quote(str(path))}")  # fmt: skip
    if len(wide) > MAX_MODE_FINDINGS:
        rep.add("warning", "wide-mode", f"{len(wide) - MAX_MODE_FINDINGS} more entries",
                f"fix all at once: chmod -R go-rwx {shlex.quote(str(home.root))}")  # fmt: skip
    if capped:
        rep.add("info", "wide-mode", str(home.root), "mode scan stopped early (very large home)")


def _chats(conn: sqlite3.Connection, rep: DoctorReport) -> None:
    counts = conn.execute(
        "SELECT channel_type, COUNT(*) FROM messaging_groups GROUP BY channel_type ORDER BY 1"
    ).fetchall()
    for ct, n in counts:
        if ct not in KNOWN_CHANNELS:
            rep.add(
                "warning", "unknown-channel", f"{n} messaging group(s) of type {ct!r}",
                f"carapace has no {ct} adapter ({', '.join(KNOWN_CHANNELS)} exist); "
                "messages there are neither received nor sent",
            )  # fmt: skip


def _roles(conn: sqlite3.Connection, rep: DoctorReport) -> None:
    if not _has(conn, "user_roles"):
        return
    dups = conn.execute(
        "SELECT user_id, role, COUNT(*) FROM user_roles WHERE agent_group_id IS NULL "
        "GROUP BY user_id, role HAVING COUNT(*) > 1"
    ).fetchall()
    for uid, role, n in dups:
        rep.add("warning", "duplicate-global-role", uid,
                f"holds global {role!r} {n} times; carapace keeps the earliest at next start")  # fmt: skip
    owner = conn.execute(
        "SELECT 1 FROM user_roles WHERE role='owner' AND agent_group_id IS NULL LIMIT 1"
    ).fetchone()
    if owner is None:
        rep.add(
            "warning", "no-owner", "user_roles",
            "nobody holds the global 'owner' role: approvals have no one to go to; grant it "
            "to your '<channel>:<id>' user with carapace admin",
        )  # fmt: skip
