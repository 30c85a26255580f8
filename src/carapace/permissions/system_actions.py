"""The privileged actions an agent asks for — ``create_agent``, ``install_packages``,
``add_mcp_server`` — checked, turned into approval requests, and applied once approved.
Importing this module registers their handlers with the approvals engine
(``carapace.permissions`` imports it, so every user of the package has them)."""

from __future__ import annotations

import logging
import re
from typing import Any

from carapace.db import destinations, groups
from carapace.db.migrations_nanoclaw import normalize_name
from carapace.db.sessions import Session, get_session
from carapace.errors import ValidationError
from carapace.jsonutil import loads_or
from carapace.packagenames import valid_package
from carapace.permissions import card_text, channel_approval
from carapace.permissions.approvals import (
    Applied,
    notify_agent,
    register_handler,
    request_approval,
)
from carapace.permissions.cards import Ctx

MAX_PACKAGES = 20
MCP_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

logger = logging.getLogger(__name__)


def agent_name(ctx: Ctx, session: Session) -> str:
    g = groups.get_agent_group(ctx.db, session.agent_group_id)
    return g.name if g else session.agent_group_id


def handle_system_action(ctx: Ctx, session_id: str, content: dict[str, Any]) -> bool:
    """Delivery's entry for ``create_agent``/``install_packages``/``add_mcp_server`` rows:
    validate, then request an approval. False when the action is not one of these."""
    action = content.get("action")
    session = get_session(ctx.db, session_id)
    if action not in ("create_agent", "install_packages", "add_mcp_server") or session is None:
        return False
    who = agent_name(ctx, session)
    try:
        if action == "create_agent":
            name = str(content.get("name") or "").strip()
            if not name:
                raise ValidationError("create_agent failed: a name is required.")
            local = normalize_name(name)
            if destinations.get_destination(ctx.db, session.agent_group_id, local) is not None:
                raise ValidationError(f'Cannot create agent "{name}": you already have a '
                                      f'destination named "{local}".')  # fmt: skip
            payload: dict[str, Any] = {"requestId": content.get("requestId"), "name": name,
                                       "instructions": content.get("instructions")}  # fmt: skip
            question = (f"Agent {card_text.quote_agent(who, 80)} wants to create a new agent "
                        f"{card_text.quote_agent(name, 80)} {card_text.AGENT_MARK}.")  # fmt: skip
            request_approval(ctx, session_id, action, payload, "Create Agent Request", question)
        elif action == "install_packages":
            apt, npm, pip = _packages(content)
            payload = {"apt": apt, "npm": npm, "pip": pip,
                       "reason": str(content.get("reason") or "")}  # fmt: skip
            listing = "\n".join(
                f"{kind}: {card_text.quote_agent(' '.join(names))}"
                for kind, names in (("pip (PyPI, into its own virtualenv)", pip),
                                    ("npm (npm registry, into its own prefix)", npm))
                if names
            )  # fmt: skip
            if apt:
                listing += (f"\napt: {card_text.quote_agent(' '.join(apt))} — will NOT be "
                            "installed (carapace does not install apt packages per group)")  # fmt: skip
            question = (f"Agent {card_text.quote_agent(who, 80)} asks to install packages, for "
                        f"its own sandbox only, running their install code in a sandbox with "
                        f"network only to the registries {card_text.AGENT_MARK}:\n{listing}")  # fmt: skip
            if payload["reason"]:
                question += f"\nReason: {card_text.quote_agent(payload['reason'])}"
            request_approval(ctx, session_id, action, payload, "Install Packages Request", question)
        else:
            payload = _mcp_payload(content)
            mcp_name = payload["name"]
            what = (f"url {card_text.quote_agent(payload['url'])}" if "url" in payload else
                    f"command {card_text.quote_agent(payload['command'])}, args "
                    f"{card_text.quote_agent(payload['args'])}, env "
                    f"{card_text.quote_agent(sorted(payload['env']))}")  # fmt: skip
            question = (
                f"Agent {card_text.quote_agent(who, 80)} asks to add an MCP server, started "
                f"with its runner {card_text.AGENT_MARK}:\nname "
                f"{card_text.quote_agent(mcp_name, 80)}, {what}"
            )
            request_approval(ctx, session_id, action, payload, "Add MCP Request", question)
    except ValidationError as exc:
        notify_agent(ctx, session, str(exc))
    return True


def _mcp_payload(content: dict[str, Any]) -> dict[str, Any]:
    """A checked ``add_mcp_server`` request: a name and a stdio command or an http(s) URL."""
    name, command, url = content.get("name"), content.get("command"), content.get("url")
    if not isinstance(name, str) or not MCP_NAME_RE.match(name):
        raise ValidationError("add_mcp_server failed: name is required (letters, digits, _ "
                              "and -, at most 40 characters).")  # fmt: skip
    if isinstance(url, str) and url:
        if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise ValidationError("add_mcp_server failed: url must be an http(s) URL.")
        return {"name": name, "url": url}
    if not isinstance(command, str) or not command:
        raise ValidationError("add_mcp_server failed: name and command (or url) are required.")
    raw_args, raw_env = content.get("args"), content.get("env")
    args: list[Any] = raw_args if isinstance(raw_args, list) else []
    env: dict[str, Any] = raw_env if isinstance(raw_env, dict) else {}
    if not all(isinstance(a, str) for a in args) or not all(
        isinstance(v, str) for v in env.values()
    ):
        raise ValidationError("add_mcp_server failed: args and env values must be strings.")
    return {"name": name, "command": command, "args": args, "env": env}


def _packages(content: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    apt, npm = content.get("apt") or [], content.get("npm") or []
    pip = content.get("pip") or []
    if not isinstance(apt, list) or not isinstance(npm, list) or not isinstance(pip, list):
        raise ValidationError("install_packages failed: apt, npm and pip must be lists.")
    if not apt and not npm and not pip:
        raise ValidationError(
            "install_packages failed: at least one apt, npm or pip package is required."
        )
    for p in pip:
        if not valid_package("pip", p):
            raise ValidationError(f'install_packages failed: invalid pip package name "{p}".')
    if len(apt) + len(npm) + len(pip) > MAX_PACKAGES:
        raise ValidationError(f"install_packages failed: at most {MAX_PACKAGES} packages.")
    for p in apt:
        if not valid_package("apt", p):
            raise ValidationError(f'install_packages failed: invalid apt package name "{p}".')
    for p in npm:
        if not valid_package("npm", p):
            raise ValidationError(f'install_packages failed: invalid npm package name "{p}".')
    return [str(p) for p in apt], [str(p) for p in npm], [str(p) for p in pip]


# --- handlers ---------------------------------------------------------------------------------


def apply_create_agent(ctx: Ctx, session: Session, payload: dict[str, Any], by: str) -> Applied:
    """Spec §4.8: the group, its folder, destinations both ways."""
    name = str(payload.get("name") or "").strip()
    source = session.agent_group_id
    local = normalize_name(name)
    if destinations.get_destination(ctx.db, source, local) is not None:
        return Applied(f'Cannot create agent "{name}": you already have a destination named '
                       f'"{local}".')  # fmt: skip
    instructions = payload.get("instructions")
    group = channel_approval.create_named_group(
        ctx, name, ctx.now(), instructions if isinstance(instructions, str) else None
    )
    now = ctx.now()
    destinations.add_destination(ctx.db, source, local, "agent", group.id, now=now)
    parent = destinations.free_name(ctx.db, group.id, "parent")
    destinations.add_destination(ctx.db, group.id, parent, "agent", source, now=now)
    return Applied(f'Agent "{local}" created. You can now message it with '
                   f'<message to="{local}">...</message>.')  # fmt: skip


def apply_install_packages(ctx: Ctx, session: Session, payload: dict[str, Any], by: str) -> Applied:
    """Install for real (carapace.packages): off the event loop when there is one (the agent is
    told the result when it is known), else at once (the operator's CLI)."""
    from carapace.packages import jobs

    note, restart = jobs.start_install(ctx, session, payload, notify_agent)
    return Applied(note, restart_group=restart)


def apply_add_mcp_server(ctx: Ctx, session: Session, payload: dict[str, Any], by: str) -> Applied:
    ag = session.agent_group_id
    cfg = groups.get_container_config(ctx.db, ag) or groups.ContainerConfig(ag)
    servers = loads_or(cfg.mcp_servers, {})
    servers = servers if isinstance(servers, dict) else {}
    name = str(payload["name"])
    if payload.get("url"):
        servers[name] = {"type": "http", "url": payload["url"]}
    else:
        servers[name] = {"command": payload["command"], "args": payload.get("args") or [],
                         "env": payload.get("env") or {}}  # fmt: skip
    groups.update_container_config(ctx.db, ag, {"mcp_servers": servers}, now=ctx.now())
    return Applied(f'MCP server "{name}" added: your runner restarts with it, and its tools '
                   f"(mcp__{name}__…) are offered from your next turn. If it fails to start, "
                   "calling them tells you why.", restart_group=ag)  # fmt: skip


def _merge(existing: Any, new: Any) -> list[str]:
    out = [str(x) for x in existing] if isinstance(existing, list) else []
    for x in new if isinstance(new, list) else []:
        if str(x) not in out:
            out.append(str(x))
    return out


register_handler("create_agent", apply_create_agent)
register_handler("install_packages", apply_install_packages)
register_handler("add_mcp_server", apply_add_mcp_server)
