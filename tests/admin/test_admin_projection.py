"""Destination and wiring changes reach the ``destinations`` table of running sessions."""

from __future__ import annotations

import json
import sqlite3

from admin_helpers import StandInHost, call
from click.testing import CliRunner

from carapace.admin.direct import DirectContext
from carapace.commands.admin import admin
from carapace.config import Home
from carapace.db import sessions
from carapace.db.session import SessionPaths, init_session_folder


def _session(ctx: DirectContext, agent_group_id: str) -> SessionPaths:
    s = sessions.create_session(ctx.db, agent_group_id, None)
    paths = SessionPaths.of(ctx.home.data_dir, agent_group_id, s.id)
    init_session_folder(paths)
    return paths


def _projected(paths: SessionPaths) -> dict[str, tuple[str | None, str]]:
    conn = sqlite3.connect(paths.inbound)
    try:
        rows = conn.execute("SELECT name, display_name, type FROM destinations").fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_direct_changes_are_projected(ctx: DirectContext, main_id: str) -> None:
    paths = _session(ctx, main_id)
    assert _projected(paths) == {}
    work = call(ctx, "groups-create", name="Work", folder="work")
    call(
        ctx,
        "destinations-add",
        agent_group_id="main",
        local_name="work",
        target_type="agent",
        target_id=work["id"],
    )
    assert _projected(paths) == {"cli": ("cli", "channel"), "work": ("Work", "agent")}

    mg = call(ctx, "messaging-groups-create", channel_type="tg", platform_id="1", name="Fam")
    call(ctx, "wirings-create", messaging_group_id=mg["id"], agent_group_id=main_id)
    assert _projected(paths)["fam"] == ("Fam", "channel")

    call(ctx, "messaging-groups-update", id=mg["id"], name="Family")
    assert _projected(paths)["fam"] == ("Family", "channel")
    call(ctx, "groups-update", id="work", name="Office")
    assert _projected(paths)["work"] == ("Office", "agent")

    call(ctx, "destinations-remove", agent_group_id="main", local_name="work")
    assert "work" not in _projected(paths)
    # another group's session is untouched
    other = _session(ctx, work["id"])
    call(ctx, "destinations-remove", agent_group_id="main", local_name="fam")
    assert _projected(other) == {}
    assert set(_projected(paths)) == {"cli"}


def test_changes_through_the_socket_are_projected(
    home: Home, ctx: DirectContext, main_id: str, host: StandInHost
) -> None:
    paths = _session(ctx, main_id)
    runner = CliRunner()
    res = runner.invoke(
        admin,
        [
            "--home",
            str(home.root),
            "messaging-groups",
            "create",
            "--channel-type",
            "tg",
            "--platform-id",
            "2",
            "--name",
            "Ops",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "applied directly" not in res.stderr
    mg_id = json.loads(res.stdout)["id"]
    res = runner.invoke(
        admin,
        [
            "--home",
            str(home.root),
            "wirings",
            "create",
            "--messaging-group-id",
            mg_id,
            "--agent-group-id",
            "main",
        ],
    )
    assert res.exit_code == 0, res.output
    assert _projected(paths)["ops"] == ("Ops", "channel")
    assert host.requests == 2
