"""An approved ``install_packages``: install, record what installed, tell the agent.

On the host's event loop the installation runs in a worker thread and the agent is told
the result when it is known (the runner restarts first, so the packages are on its PATH
from its next turn); without a loop (the operator's CLI) it runs at once. Only packages
that installed are recorded in the group's config: npm in ``packages_npm`` (NanoClaw's
column), pip in ``settings.packages_pip``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carapace.db import groups
from carapace.packages.install import Report, install

if TYPE_CHECKING:
    from carapace.db.sessions import Session
    from carapace.permissions.cards import Ctx

logger = logging.getLogger(__name__)
_RUNNING: set[asyncio.Future[Report]] = set()


def _names(payload: dict[str, Any], key: str) -> list[str]:
    value = payload.get(key)
    return [str(x) for x in value] if isinstance(value, list) else []


def record(ctx: Ctx, agent_group_id: str, report: Report) -> None:
    """Add what installed to the group's config."""
    cfg = groups.get_container_config(ctx.db, agent_group_id) or groups.ContainerConfig(
        agent_group_id
    )
    npm = [k.split(":", 1)[1] for k in report.installed if k.startswith("npm:")]
    pip = [k.split(":", 1)[1] for k in report.installed if k.startswith("pip:")]
    if not npm and not pip:
        return
    from carapace.jsonutil import loads_or

    current = loads_or(cfg.packages_npm, [])
    current = [str(x) for x in current] if isinstance(current, list) else []
    settings = cfg.settings_dict()
    had = settings.get("packages_pip")
    pips = [str(x) for x in had] if isinstance(had, list) else []
    changes: dict[str, Any] = {
        "packages_npm": current + [n for n in npm if n not in current],
        "settings": {**settings, "packages_pip": pips + [p for p in pip if p not in pips]},
    }
    groups.update_container_config(ctx.db, agent_group_id, changes, now=ctx.now())


def final_note(report: Report) -> str:
    text = report.text()
    if report.installed:
        text += (" Your runner restarts with them: they are on your PATH (pip packages in "
                 "your own python3, npm packages' commands and NODE_PATH) from your next turn.")  # fmt: skip
    return text


def start_install(
    ctx: Ctx,
    session: Session,
    payload: dict[str, Any],
    notify: Callable[[Ctx, Session, str], None],
) -> tuple[str, str | None]:
    """The note for the agent now, and the group to restart now (None: later or never)."""
    ag = session.agent_group_id
    pip, npm, apt = _names(payload, "pip"), _names(payload, "npm"), _names(payload, "apt")
    job = functools.partial(install, ctx.home, ag, pip=pip, npm=npm, apt=apt,
                            bwrap=ctx.settings.bwrap)  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        report = job()
        record(ctx, ag, report)
        return final_note(report), (ag if report.installed else None)

    def done(fut: asyncio.Future[Report]) -> None:
        _RUNNING.discard(fut)
        try:
            report = fut.result()
        except Exception as exc:
            logger.exception("package installation for %s failed", ag)
            report = Report(failed=[(f"{k}:{n}", f"installation failed: {exc}")
                                    for k, ns in (("pip", pip), ("npm", npm)) for n in ns])  # fmt: skip
        try:
            record(ctx, ag, report)
            if report.installed:
                ctx.restart_group(ag)
        finally:
            notify(ctx, session, final_note(report))

    fut = loop.run_in_executor(None, job)
    _RUNNING.add(fut)
    fut.add_done_callback(done)
    listing = ", ".join([*(f"pip:{p}" for p in pip), *(f"npm:{n}" for n in npm)])
    if not pip and not npm:
        return "Approved, but nothing can be installed: " + install_refusals(apt), None
    note = f"Approved: installing {listing} (this can take a few minutes)."
    if apt:
        note += " " + install_refusals(apt)
    return note + " You will be told what installed and what failed.", None


def install_refusals(apt: list[str]) -> str:
    from carapace.packages.install import APT_REFUSAL

    return f"apt {', '.join(apt)}: {APT_REFUSAL}." if apt else ""
