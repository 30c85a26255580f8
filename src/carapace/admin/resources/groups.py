"""``groups``: agent groups — rows in ``agent_groups``, a folder under ``groups/``, a config row.

Fixes spec §11.1 item 9: ``create`` makes the folder, the instructions file and the
``container_configs`` row at once, so the group can be spawned immediately.
"""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import FORCE, LIMIT, need_change, row, rows
from carapace.admin.resources.group_config import CONFIG_VERBS, check_provider
from carapace.bootstrap import ensure_group_folder
from carapace.db import groups
from carapace.db.destinations import notify_changed, projection
from carapace.db.sessions import list_sessions
from carapace.errors import CarapaceError, ConfigError

GROUP_ID = Opt("id", "The agent group's id or folder (may be given positionally).", required=True)


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return rows(groups.list_agent_groups(ctx.db), args)


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return row(groups.require_agent_group(ctx.db, args["id"]))


def _create(ctx: AdminContext, args: dict[str, Any]) -> Any:
    check_provider(args.get("agent_provider"), "--agent-provider")
    g = groups.create_agent_group(
        ctx.db,
        args["name"],
        args["folder"],
        id=args.get("id"),
        agent_provider=args.get("agent_provider"),
        now=ctx.now(),
    )
    try:
        path = ensure_group_folder(ctx.home, g.folder, g.name)
    except OSError as exc:
        groups.delete_agent_group(ctx.db, g.id, force=True)
        raise ConfigError(f"cannot create folder groups/{g.folder}: {exc.strerror or exc}")
    return {**row(g), "path": str(path)}


def _update(ctx: AdminContext, args: dict[str, Any]) -> Any:
    g = groups.require_agent_group(ctx.db, args["id"])
    changes = need_change(args, ("name", "agent_provider"))
    check_provider(changes.get("agent_provider"), "--agent-provider")
    out = groups.update_agent_group(ctx.db, g.id, **changes)
    if "name" in changes:
        # agents that address this group see its name in their destinations
        for r in ctx.db.execute(
            "SELECT DISTINCT agent_group_id FROM agent_destinations "
            "WHERE target_type='agent' AND target_id=?",
            (g.id,),
        ).fetchall():
            notify_changed(ctx.db, r[0])
    return row(out)


def _delete(ctx: AdminContext, args: dict[str, Any]) -> Any:
    g = groups.require_agent_group(ctx.db, args["id"])
    deps = groups.group_dependents(ctx.db, g.id)
    force = bool(args.get("force"))
    if deps and not force:
        groups.delete_agent_group(ctx.db, g.id)  # raises the clear "still used by" error
    referrers = [
        r[0]
        for r in ctx.db.execute(
            "SELECT DISTINCT agent_group_id FROM agent_destinations "
            "WHERE target_type='agent' AND target_id=? AND agent_group_id<>?",
            (g.id, g.id),
        ).fetchall()
    ]
    for s in list_sessions(ctx.db, agent_group_id=g.id):
        ctx.stop_session(s.id)
    groups.delete_agent_group(ctx.db, g.id, force=force)
    for ag in referrers:
        notify_changed(ctx.db, ag)
    return {"deleted": g.id, "folder": g.folder, "folder_kept": True, "cascaded": deps}


def _restart(ctx: AdminContext, args: dict[str, Any]) -> Any:
    g = groups.require_agent_group(ctx.db, args["id"])
    if args.get("rebuild"):
        raise CarapaceError(
            "--rebuild is not supported: runner images are built by the runner backend "
            "on the next spawn after a config change"
        )
    n = ctx.restart_group(g.id, args.get("message"))
    return {"restarted": n, "rebuilt": False, "live": ctx.live}


def _prompt(ctx: AdminContext, args: dict[str, Any]) -> Any:
    g = groups.require_agent_group(ctx.db, args["id"])
    try:
        from carapace.runner.prompt import compose_system_prompt
    except ImportError:
        raise CarapaceError("the prompt composer (carapace.runner.prompt) is not available")
    from carapace.runner.providers import PROVIDER_ALIASES
    from carapace.runner.providers.claude_tools import PROMPT_NAMES

    cfg = groups.get_container_config(ctx.db, g.id)
    name = (cfg.assistant_name if cfg else None) or g.name
    provider = ((cfg.provider if cfg else None) or "").lower()
    # the claude provider: Claude Code reads the memory files itself, its tools have its names
    claude = PROVIDER_ALIASES.get(provider, provider) == "claude"
    text = compose_system_prompt(
        ctx.home.group_dir(g.folder),
        projection(ctx.db, g.id),
        name,
        settings=cfg.settings_dict() if cfg else {},
        memory=not claude,
        tool_names=PROMPT_NAMES if claude else None,
    )
    return str(text)


RESOURCE = Resource(
    name="groups",
    singular="agent group",
    help="Agent groups: an agent's folder, instructions, config and sessions.",
    scope_field="id",
    group_scope=True,
    id_is_group=True,
    verbs=(
        Verb("list", _list, "List agent groups.", options=(LIMIT,), kind="list"),
        Verb("get", _get, "Show one agent group.", options=(GROUP_ID,), kind="get"),
        Verb(
            "create",
            _create,
            "Create an agent group with its folder, instructions file and config row.",
            access="approval",
            group_scope=False,
            options=(
                Opt("name", "Display name.", required=True),
                Opt("folder", "Folder under groups/ (letters, digits, _ - .).", required=True),
                Opt("id", "Id to use (default: a generated ag-<ms>-<rand6>)."),
                Opt("agent_provider", "Deprecated per-group provider (config wins)."),
            ),
        ),
        Verb(
            "update",
            _update,
            "Rename an agent group (the folder never changes).",
            access="approval",
            options=(GROUP_ID, Opt("name", "New display name."), Opt("agent_provider", "")),
        ),
        Verb(
            "delete",
            _delete,
            "Delete an agent group; refuses while rows depend on it unless --force "
            "(the folder is kept on disk).",
            access="approval",
            options=(GROUP_ID, FORCE),
        ),
        Verb(
            "restart",
            _restart,
            "Stop the group's running runners; with --message, wake them with that note.",
            access="approval",
            options=(
                GROUP_ID,
                Opt("message", "An on_wake note for the agent; the runner restarts at once."),
                Opt("rebuild", "Rebuild the runner image first (not supported).", type="bool"),
            ),
        ),
        Verb(
            "prompt",
            _prompt,
            "Show the composed system prompt of the group.",
            options=(GROUP_ID,),
            kind="get",
        ),
        *CONFIG_VERBS,
    ),
)
