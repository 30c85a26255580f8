"""``groups config …``: an agent group's ``container_configs`` row (applied on next spawn)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Verb
from carapace.db import groups
from carapace.errors import NotFoundError, ValidationError
from carapace.jsonutil import loads_or

logger = logging.getLogger(__name__)
GROUP_ID = Opt("id", "The agent group's id or folder (may be given positionally).", required=True)
PACKAGE_RE = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9@._+/:=~^-]{0,127}$")
_JSON_COLUMNS = ("skills", "mcp_servers", "packages_apt", "packages_npm", "additional_mounts")
_NULLABLE = ("provider", "model", "effort", "image_tag", "assistant_name")


def check_provider(name: Any, flag: str = "--provider") -> None:
    """``ValidationError`` unless ``name`` is a provider the runner has (or empty: clear)."""
    from carapace.runner.config import PROVIDER_ALIASES
    from carapace.runner.providers import provider_names

    if name is None or (isinstance(name, str) and not name.strip()):
        return
    key = str(name).strip().lower()
    known = provider_names()
    if PROVIDER_ALIASES.get(key, key) not in known:
        names = ", ".join([*known, *PROVIDER_ALIASES])
        raise ValidationError(f"{flag}: unknown provider {str(name)[:64]!r} (known: {names})")


def config_dict(cfg: groups.ContainerConfig) -> dict[str, Any]:
    """The config row with its JSON columns decoded."""
    return {
        "agent_group_id": cfg.agent_group_id,
        "provider": cfg.provider,
        "model": cfg.model,
        "effort": cfg.effort,
        "image_tag": cfg.image_tag,
        "assistant_name": cfg.assistant_name,
        "max_messages_per_prompt": cfg.max_messages_per_prompt,
        "skills": loads_or(cfg.skills, "all"),
        "mcp_servers": loads_or(cfg.mcp_servers, {}),
        "packages_apt": loads_or(cfg.packages_apt, []),
        "packages_npm": loads_or(cfg.packages_npm, []),
        "additional_mounts": loads_or(cfg.additional_mounts, []),
        "cli_scope": cfg.cli_scope,
        "settings": cfg.settings_dict(),
        "updated_at": cfg.updated_at,
    }


def _config(ctx: AdminContext, args: dict[str, Any]) -> tuple[str, groups.ContainerConfig]:
    g = groups.require_agent_group(ctx.db, args["id"])
    cfg = groups.get_container_config(ctx.db, g.id) or groups.ContainerConfig(g.id)
    return g.id, cfg


def _get(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return config_dict(_config(ctx, args)[1])


def _merged_settings(cfg: groups.ContainerConfig, patch: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``patch`` applied (a null value removes a key), checked."""
    from carapace.runner.settings import validate_settings

    merged = {**cfg.settings_dict(), **patch}
    merged = {k: v for k, v in merged.items() if v is not None}
    problems = validate_settings(merged)
    if problems:
        raise ValidationError("invalid --settings: " + "; ".join(problems))
    return merged


def _update(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag, cfg = _config(ctx, args)
    keys = (*_NULLABLE, "max_messages_per_prompt", "cli_scope", "settings")
    changes = {k: args[k] for k in keys if k in args}
    if "provider" in changes:
        check_provider(changes["provider"])
    if "settings" in changes:
        changes["settings"] = _merged_settings(cfg, changes["settings"])
    if not changes:
        flags = ", ".join("--" + k.replace("_", "-") for k in keys)
        raise ValidationError(f"nothing to update: give at least one of {flags}")
    for key in _NULLABLE:
        if changes.get(key) == "":
            changes[key] = None  # an empty value clears the setting
    return config_dict(groups.update_container_config(ctx.db, ag, changes, now=ctx.now()))


def _add_mcp(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag, cfg = _config(ctx, args)
    name = args["name"].strip()
    if not name:
        raise ValidationError("--name must not be empty")
    servers = loads_or(cfg.mcp_servers, {})
    if not isinstance(servers, dict):
        servers = {}
    entry: dict[str, Any] = {
        "command": args["command"],
        "args": args.get("args", []),
        "env": args.get("env", {}),
    }
    if any(not isinstance(a, str) for a in entry["args"]):
        raise ValidationError("--args must be a JSON array of strings")
    if any(not isinstance(v, str) for v in entry["env"].values()):
        raise ValidationError("--env must be a JSON object of strings")
    if args.get("instructions"):
        entry["instructions"] = args["instructions"]
    servers[name] = entry
    cfg2 = groups.update_container_config(ctx.db, ag, {"mcp_servers": servers}, now=ctx.now())
    return config_dict(cfg2)


def _remove_mcp(ctx: AdminContext, args: dict[str, Any]) -> Any:
    ag, cfg = _config(ctx, args)
    servers = loads_or(cfg.mcp_servers, {})
    if not isinstance(servers, dict) or args["name"] not in servers:
        raise NotFoundError(f"agent group {ag} has no MCP server {args['name']!r}")
    del servers[args["name"]]
    cfg2 = groups.update_container_config(ctx.db, ag, {"mcp_servers": servers}, now=ctx.now())
    return config_dict(cfg2)


def _packages(args: dict[str, Any]) -> dict[str, str]:
    from carapace.packages.install import check_names

    wanted: dict[str, str] = {k: args[k] for k in ("apt", "npm", "pip") if k in args}
    if not wanted:
        raise ValidationError("give --pip PACKAGE, --npm PACKAGE or --apt PACKAGE")
    check_names([wanted["pip"]] if "pip" in wanted else [],
                [wanted["npm"]] if "npm" in wanted else [],
                [wanted["apt"]] if "apt" in wanted else [])  # fmt: skip
    return wanted


def _add_package(ctx: AdminContext, args: dict[str, Any]) -> Any:
    """Install for real (carapace.packages), record what installed, restart the group."""
    from carapace.packages.install import install
    from carapace.packages.jobs import record

    ag, _cfg = _config(ctx, args)
    wanted = _packages(args)
    job = functools.partial(install, ctx.home, ag, bwrap=ctx.settings.bwrap,
                            **{k: [v] for k, v in wanted.items()})  # fmt: skip
    try:  # on the host's event loop (an agent's approved cli_command): never block it
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        fut = loop.run_in_executor(None, job)
        fut.add_done_callback(lambda f: _installed(ctx, ag, f))
        return {"installing": [f"{k}:{v}" for k, v in wanted.items()],
                "note": "installation runs in the background; `groups config get` shows what "
                        "installed, the package log says why anything failed"}  # fmt: skip
    report = job()
    record(ctx, ag, report)
    if report.installed:
        ctx.restart_group(ag)
    cfg = groups.get_container_config(ctx.db, ag) or groups.ContainerConfig(ag)
    return {"installed": report.installed, "failed": [{"package": n, "reason": why}
            for n, why in report.failed], "config": config_dict(cfg)}  # fmt: skip


def _installed(ctx: AdminContext, ag: str, fut: Any) -> None:
    from carapace.packages.jobs import record

    try:
        report = fut.result()
        record(ctx, ag, report)
        if report.installed:
            ctx.restart_group(ag)
    except Exception:
        logger.exception("background package installation for %s failed", ag)


def _remove_package(ctx: AdminContext, args: dict[str, Any]) -> Any:
    from carapace.packages.install import remove

    ag, cfg = _config(ctx, args)
    wanted = _packages(args)
    changes: dict[str, Any] = {}
    for kind, name in wanted.items():
        if kind == "pip":
            settings = cfg.settings_dict()
            current = settings.get("packages_pip")
            current = current if isinstance(current, list) else []
            if name not in current:
                raise NotFoundError(f"agent group {ag} has no pip package {name!r}")
            changes["settings"] = {**settings, "packages_pip": [p for p in current if p != name]}
            continue
        current = loads_or(getattr(cfg, f"packages_{kind}"), [])
        if not isinstance(current, list) or name not in current:
            raise NotFoundError(f"agent group {ag} has no {kind} package {name!r}")
        changes[f"packages_{kind}"] = [p for p in current if p != name]
    job = functools.partial(remove, ctx.home, ag, bwrap=ctx.settings.bwrap,
                            **{k: [v] for k, v in wanted.items() if k != "apt"})  # fmt: skip
    cfg2 = groups.update_container_config(ctx.db, ag, changes, now=ctx.now())
    try:  # on the host's event loop (an agent's approved cli_command): never block it
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        fut = loop.run_in_executor(None, job)
        fut.add_done_callback(lambda f: ctx.restart_group(ag) if not f.exception() else None)
        return {"removing": [f"{k}:{v}" for k, v in wanted.items()], "config": config_dict(cfg2)}
    report = job()
    if report.installed:
        ctx.restart_group(ag)
    return {"removed": report.installed, "failed": [{"package": n, "reason": why}
            for n, why in report.failed], "config": config_dict(cfg2)}  # fmt: skip


APT = Opt(
    "apt", "A Debian package name (recorded; not installed per group: refused with a reason)."
)
NPM = Opt("npm", "An npm package name (installed into the group's own npm prefix).")
PIP = Opt("pip", "A PyPI package name (installed into the group's own virtualenv).")

CONFIG_VERBS = (
    Verb(
        "config get",
        _get,
        "Show the group's runner config (JSON columns decoded).",
        options=(GROUP_ID,),
        kind="get",
    ),
    Verb(
        "config update",
        _update,
        "Change runner config fields (an empty value clears one); applied on next spawn.",
        access="approval",
        options=(
            GROUP_ID,
            Opt(
                "provider",
                "Model provider: mock, anthropic (the Messages API), openai, claude "
                "(NanoClaw's: the Claude Agent SDK; also claude-agent-sdk).",
            ),
            Opt("model", "Model name."),
            Opt("effort", "Reasoning effort."),
            Opt("image_tag", "Runner image tag."),
            Opt("assistant_name", "The name the agent answers to."),
            Opt("max_messages_per_prompt", "Batch size of one turn.", type="int"),
            Opt(
                "cli_scope",
                "What the agent may do with the admin CLI.",
                type="enum",
                choices=groups.CLI_SCOPES,
            ),
            Opt(
                "settings",
                "Agent settings to merge, as a JSON object (null removes a key): provider "
                "base_url, max_tokens, context_limit_tokens, tools, bash, web, max_tool_rounds "
                "(docs/agent-settings.md).",
                type="json",
                json_kind=dict,
            ),
        ),
    ),
    Verb(
        "config add-mcp-server",
        _add_mcp,
        "Add (or replace) an MCP server of the group (started with its runners).",
        access="approval",
        options=(
            GROUP_ID,
            Opt("name", "Server name.", required=True),
            Opt("command", "Executable to start.", required=True),
            Opt("args", "Arguments as a JSON array.", type="json", json_kind=list),
            Opt("env", "Environment as a JSON object.", type="json", json_kind=dict),
            Opt("instructions", "Extra instructions for the agent about this server."),
        ),
    ),
    Verb(
        "config remove-mcp-server",
        _remove_mcp,
        "Remove an MCP server of the group.",
        access="approval",
        options=(GROUP_ID, Opt("name", "Server name.", required=True)),
    ),
    Verb(
        "config add-package",
        _add_package,
        "Install a pip or npm package for the group's sandbox only (sandboxed install, "
        "registries-only network); says what installed and what failed.",
        access="approval",
        options=(GROUP_ID, PIP, NPM, APT),
    ),
    Verb(
        "config remove-package",
        _remove_package,
        "Uninstall a pip or npm package of the group (and drop it from the config).",
        access="approval",
        options=(GROUP_ID, PIP, NPM, APT),
    ),
)
