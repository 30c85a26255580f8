"""v1 ``registered_groups`` → agent groups, messaging groups, wirings, destinations, container
configs, group folders and sessions (spec/v1-migration.md §3.4, §3.6, §3.7)."""

from __future__ import annotations

import json
import posixpath
import sqlite3
from typing import Any

from carapace.bootstrap import ensure_group_folder
from carapace.db import groups, messaging
from carapace.db.connection import transaction
from carapace.db.destinations import find_by_target
from carapace.db.session import open_outbound
from carapace.errors import CarapaceError
from carapace.migrate.context import ImportContext, Wired
from carapace.migrate.files import copy_claude_state, copy_group_folder, pick_transcript
from carapace.migrate.mapping import KNOWN_CHANNELS, Chat, JidError, map_engage, map_jid
from carapace.migrate.report import Outcome
from carapace.migrate.v1source import V1Group
from carapace.timefmt import iso

T = "registered_groups"


def import_groups(ctx: ImportContext) -> None:
    for g in ctx.src.groups():
        problem = _folder_problem(g.folder)
        if problem:
            ctx.report.add(T, g.jid, "skipped", detail=f"folder {g.folder!r} {problem}")
            ctx.report.need(
                f"v1 group {g.name or g.jid!r}",
                f"folder {g.folder!r} {problem}; v1 itself refused to load it",
                "register it again in carapace with a valid folder name, then copy "
                f"groups/{g.folder}/ by hand",
            )
            continue
        try:
            _import_group(ctx, g)
        except CarapaceError as exc:
            ctx.report.add(T, g.jid, "failed", detail=str(exc))
            ctx.report.need(f"v1 group {g.jid}", str(exc), "fix the row and re-run migrate-v1")


def _folder_problem(folder: str) -> str | None:
    from carapace.migrate.mapping import folder_problem

    return folder_problem(folder)


def _import_group(ctx: ImportContext, g: V1Group) -> None:
    chat: Chat | None = None
    jid_error: str | None = None
    try:
        chat = map_jid(g.jid)
    except JidError as exc:
        jid_error = str(exc)
    targets: list[str] = []
    details: list[str] = []
    with transaction(ctx.conn):
        ag_id, ag_new = _agent_group(ctx, g, targets, details)
        if ag_id is None:
            ctx.report.add(T, g.jid, "skipped", detail="; ".join(details))
            return
        mg_id: str | None = None
        if chat is not None:
            mg_id = _messaging_group(ctx, g, chat, targets, details)
            if mg_id is not None:
                _wiring(ctx, g, ag_id, mg_id, targets, details)
    ctx.folders[g.folder] = ag_id
    ctx.imported.append(Wired(g.jid, g.folder, ag_id, chat, mg_id))
    if ag_new:
        _copy_folder(ctx, g, details)
    if jid_error:
        details.append(jid_error)
        ctx.report.need(
            f"agent group {g.folder}",
            f"imported without a chat: {jid_error}",
            "create a messaging group and a wiring for it (carapace admin)",
        )
    elif chat is not None and chat.channel_type not in KNOWN_CHANNELS:
        ctx.report.need(
            f"{chat.channel_type} chats",
            f"carapace has no {chat.channel_type} adapter; those chats are imported but inert",
            f"rewire the agent groups to a channel with an adapter ({', '.join(KNOWN_CHANNELS)})",
        )
    if mg_id is not None:
        assert chat is not None
        sid, created = ctx.session_for(ag_id, mg_id, chat)
        ctx.record(T, g.jid, "session", sid)
        targets.append(f"session {sid}" + ("" if created else " (existing)"))
    outcome: Outcome = "imported" if ag_new or any("(new)" in t for t in targets) else "reused"
    ctx.report.add(T, g.jid, outcome, "; ".join(targets), "; ".join(details))


def _agent_group(
    ctx: ImportContext, g: V1Group, targets: list[str], details: list[str]
) -> tuple[str | None, bool]:
    seen, prev = ctx.ledger(T, g.jid, "agent_group")
    if seen:
        if prev and groups.get_agent_group(ctx.conn, prev):
            targets.append(f"agent group {prev}")
            return prev, False
        details.append(f"imported before as agent group {prev}, deleted since; not re-created")
        return None, False
    existing = groups.get_agent_group_by_folder(ctx.conn, g.folder)
    if existing is not None:
        ctx.record(T, g.jid, "agent_group", existing.id)
        targets.append(f"agent group {existing.id} (existing, folder {g.folder})")
        if g.container_config:
            details.append("kept the existing group's container config; v1's was not applied")
        return existing.id, False
    ag = groups.create_agent_group(ctx.conn, g.name.strip() or g.folder, g.folder, now=ctx.now)
    ctx.record(T, g.jid, "agent_group", ag.id)
    targets.append(f"agent group {ag.id} (new)")
    _container_config(ctx, g, ag.id, details)
    return ag.id, True


def _container_config(ctx: ImportContext, g: V1Group, ag_id: str, details: list[str]) -> None:
    """v1 ``container_config`` → ``container_configs`` directly (NanoClaw: via container.json
    and a backfill at host start). Mounts get v1's defaults made explicit; other keys (the
    v1 ``timeout``) are kept under ``settings.v1`` instead of being dropped."""
    changes: dict[str, Any] = {}
    name = ctx.src.env.get("ASSISTANT_NAME")
    if name:
        changes["assistant_name"] = name
    raw = g.container_config
    if raw is not None:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
            _sidecar(ctx, g, raw)
            details.append("container_config is not JSON: kept as .v1-container-config.json")
            ctx.report.need(
                f"agent group {g.folder}",
                "v1 container_config is not valid JSON (kept in groups/"
                f"{g.folder}/.v1-container-config.json); defaults used",
                "read the sidecar file and set the config with carapace admin",
            )
        if isinstance(value, dict):
            mounts = value.get("additionalMounts")
            if isinstance(mounts, list):
                changes["additional_mounts"] = [_mount(m) for m in mounts]
            rest = {k: v for k, v in value.items() if k != "additionalMounts"}
            if rest:
                changes["settings"] = {"v1": rest}
                details.append(f"v1 config keys kept under settings.v1: {', '.join(rest)}")
            if mounts:
                ctx.report.need(
                    f"agent group {g.folder}",
                    f"{len(mounts)} host mount(s) imported from v1",
                    "check the mount paths still exist and should be visible to the agent",
                )
        elif value is not None:
            details.append(f"container_config {raw!r} is not an object; defaults used")
    if changes:
        groups.update_container_config(ctx.conn, ag_id, changes, now=ctx.now)


def _mount(m: Any) -> Any:
    if not isinstance(m, dict) or not isinstance(m.get("hostPath"), str):
        return m
    out = dict(m)
    out.setdefault("containerPath", posixpath.basename(m["hostPath"].rstrip("/")) or "mount")
    out.setdefault("readonly", True)
    return out


def _sidecar(ctx: ImportContext, g: V1Group, raw: str) -> None:
    if not ctx.write_files:
        return
    path = ctx.home.group_dir(g.folder) / ".v1-container-config.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw, encoding="utf-8")


def _messaging_group(
    ctx: ImportContext, g: V1Group, chat: Chat, targets: list[str], details: list[str]
) -> str | None:
    seen, prev = ctx.ledger(T, g.jid, "messaging_group")
    if seen:
        if prev and messaging.get_messaging_group(ctx.conn, prev):
            targets.append(f"messaging group {prev}")
            return prev
        details.append(f"imported before as messaging group {prev}, deleted since")
        return None
    mg = messaging.get_messaging_group_by_platform(ctx.conn, chat.channel_type, chat.platform_id)
    if mg is None:
        mg = messaging.create_messaging_group(
            ctx.conn, chat.channel_type, chat.platform_id, name=g.name.strip() or None,
            is_group=chat.is_group, unknown_sender_policy="public", now=ctx.now,
        )  # fmt: skip
        targets.append(f"messaging group {mg.id} (new, {chat.channel_type} {chat.platform_id})")
        ctx.report.need(
            "access policy",
            "imported chats answer everyone (unknown_sender_policy 'public'), as NanoClaw's "
            "migration does; v1's sender allowlist is not carried over",
            "set 'strict' or 'request_approval' on chats where strangers may write",
        )
    else:
        targets.append(f"messaging group {mg.id} (existing)")
        if mg.unknown_sender_policy != "public" and not messaging.wirings_for_chat(ctx.conn, mg.id):
            messaging.update_messaging_group(ctx.conn, mg.id, unknown_sender_policy="public")
            details.append(
                f"unwired chat's policy {mg.unknown_sender_policy!r} set to 'public' (NanoClaw)"
            )
    ctx.record(T, g.jid, "messaging_group", mg.id)
    return mg.id


def _wiring(
    ctx: ImportContext, g: V1Group, ag_id: str, mg_id: str, targets: list[str], details: list[str]
) -> None:
    seen, prev = ctx.ledger(T, g.jid, "wiring")
    if seen:
        if prev and messaging.get_wiring(ctx.conn, prev):
            targets.append(f"wiring {prev}")
        else:
            details.append(f"imported before as wiring {prev}, deleted since; not re-created")
        return
    existing = messaging.get_wiring_for(ctx.conn, mg_id, ag_id)
    if existing is not None:
        ctx.record(T, g.jid, "wiring", existing.id)
        targets.append(f"wiring {existing.id} (existing, left as is)")
        return
    eng = map_engage(g.trigger_pattern, g.requires_trigger, g.is_main)
    w = messaging.create_wiring(
        ctx.conn, mg_id, ag_id, engage_mode=eng.mode, engage_pattern=eng.pattern,
        sender_scope="all", ignored_message_policy=eng.ignored_message_policy,
        session_mode="shared", priority=0, now=ctx.now,
    )  # fmt: skip
    ctx.record(T, g.jid, "wiring", w.id)
    dest = find_by_target(ctx.conn, ag_id, "channel", mg_id)
    shown = "." if eng.pattern == "." else repr(eng.pattern)
    targets.append(f"wiring {w.id} (new, {eng.mode} {shown if eng.pattern else ''})".strip())
    if dest is not None:
        targets.append(f"destination {dest.local_name!r}")
    details.extend(eng.notes)
    if len(messaging.wirings_for_chat(ctx.conn, mg_id)) > 1:
        details.append("this chat is wired to more than one agent group: all of them engage")


def _copy_folder(ctx: ImportContext, g: V1Group, details: list[str]) -> None:
    src = ctx.src.group_dir(g.folder)
    dst = ctx.file_root.group_dir(g.folder)
    if src is not None and src.is_dir():
        res = copy_group_folder(src, dst, write=ctx.write_files)
        details.append(f"{res.copied} file(s) copied from groups/{g.folder}/")
        for s in res.skipped:
            details.append(f"not copied: {s}")
        if (src / "CLAUDE.md").is_file():
            ctx.report.need(
                f"groups/{g.folder}/CLAUDE.local.md",
                "v1 instructions copied verbatim (v1 template text, /workspace/group paths)",
                "review it: strip v1 boilerplate, paths are now /workspace/agent",
            )
    if ctx.write_files:
        ensure_group_folder(ctx.home, g.folder, g.name.strip() or g.folder)


def import_sessions(ctx: ImportContext) -> None:
    """Claude state + the conversation to continue, per imported group with a session."""
    v1_sessions = ctx.src.sessions()
    done: set[str] = set()
    for w in ctx.imported:
        if w.messaging_group_id is None or w.chat is None or w.folder in done:
            continue
        done.add(w.folder)
        claude = ctx.src.claude_dir(w.folder)
        wanted = v1_sessions.get(w.folder)
        if claude is None or not claude.is_dir():
            if wanted:
                ctx.report.add("sessions", w.folder, "dropped", detail=(
                    f"v1 session {wanted} has no transcript folder (data/sessions/{w.folder})"
                ))  # fmt: skip
            continue
        shared = ctx.home.sessions_dir / w.agent_group_id / ".claude-shared"
        res = copy_claude_state(claude, shared, write=ctx.write_files)
        uuid = pick_transcript(claude, wanted)
        sid, _ = ctx.session_for(w.agent_group_id, w.messaging_group_id, w.chat)
        target = f"session {sid}: {res.copied} Claude state file(s) copied"
        if uuid is not None:
            _set_continuation(ctx, w.agent_group_id, sid, uuid)
            target += f", continues conversation {uuid}"
        detail = ""
        if wanted and uuid != wanted:
            detail = f"v1 session id {wanted} has no transcript; continuing the newest one"
        seen, _ = ctx.ledger("sessions", w.folder, "continuation")
        ctx.record("sessions", w.folder, "continuation", uuid)
        ctx.report.add("sessions", w.folder, "reused" if seen else "imported", target, detail)


def _set_continuation(ctx: ImportContext, ag_id: str, sid: str, uuid: str) -> None:
    """Written once: a re-run never rewinds a conversation carapace has moved on (NanoClaw
    overwrites it on every run, spec §3.11)."""
    conn = open_outbound(ctx.paths(ag_id, sid))
    try:
        conn.execute(
            "INSERT OR IGNORE INTO session_state (key, value, updated_at) VALUES (?, ?, ?)",
            ("continuation:claude", uuid, iso(ctx.now)),
        )
    finally:
        conn.close()


def has_wiring(conn: sqlite3.Connection, mg_id: str, ag_id: str) -> bool:
    return messaging.get_wiring_for(conn, mg_id, ag_id) is not None
