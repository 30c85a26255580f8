"""Agent callers: cli_scope (disabled / group / global) and the approval gate (spec §8.3)."""

from __future__ import annotations

from typing import Any

import pytest
from admin_helpers import call, call_err, dump

from carapace.admin.direct import DirectContext
from carapace.admin.dispatch import dispatch, run_approved_cli_command
from carapace.db import approvals, groups, sessions
from carapace.jsonutil import loads_or


@pytest.fixture
def two(ctx: DirectContext, main_id: str) -> dict[str, Any]:
    other = call(ctx, "groups-create", name="Other", folder="other")
    s_main = sessions.create_session(ctx.db, main_id, None)
    s_other = sessions.create_session(ctx.db, other["id"], None)
    return {
        "main": main_id,
        "other": other["id"],
        "s_main": s_main.id,
        "s_other": s_other.id,
        "agent": {"caller": "agent", "sessionId": s_main.id, "agentGroupId": main_id},
    }


def test_group_scope_sees_only_its_own_group(ctx: DirectContext, two: dict[str, Any]) -> None:
    agent = two["agent"]
    assert [g["id"] for g in call(ctx, "groups-list", agent)] == [two["main"]]
    assert call(ctx, "groups-get", agent)["id"] == two["main"]  # id auto-filled
    assert call(ctx, "groups-get", agent, id="main")["id"] == two["main"]  # by folder
    assert call(ctx, "groups-config-get", agent)["agent_group_id"] == two["main"]
    assert [s["id"] for s in call(ctx, "sessions-list", agent)] == [two["s_main"]]
    assert all(d["agent_group_id"] == two["main"] for d in call(ctx, "destinations-list", agent))
    assert call(ctx, "members-list", agent) == []
    help_text = call(ctx, "help", agent)
    assert "\n  groups " in help_text and "\n  wirings " not in help_text


def test_group_scope_cannot_touch_another_group(ctx: DirectContext, two: dict[str, Any]) -> None:
    agent = two["agent"]
    before = dump(ctx)
    for command, args in [
        ("groups-get", {"id": two["other"]}),
        ("groups-get", {"id": "other"}),
        ("groups-get", {"id": "no-such-group"}),  # same answer: no existence oracle
        ("groups-config-get", {"id": two["other"]}),
        ("groups-update", {"id": two["other"], "name": "x"}),
        ("destinations-list", {"agent-group-id": two["other"]}),
        ("members-list", {"group": two["other"]}),
        ("sessions-list", {"agent_group_id": two["other"]}),
        ("wirings-list", {}),
        ("users-list", {}),
        ("messaging-groups-list", {}),
        ("approvals-list", {}),
        ("groups-create", {"name": "x", "folder": "x"}),
        ("wirings-help", {}),
    ]:
        code, _ = call_err(ctx, command, agent, **args)
        assert code == "forbidden", (command, args)
    # a foreign session looks exactly like a missing one
    foreign = call_err(ctx, "sessions-get", agent, id=two["s_other"])
    missing = call_err(ctx, "sessions-get", agent, id="sess-missing")
    assert foreign[0] == missing[0] == "not-found"
    assert foreign[1].replace(two["s_other"], "X") == missing[1].replace("sess-missing", "X")
    assert call_err(ctx, "sessions-close", agent, id=two["s_other"])[0] == "not-found"
    assert dump(ctx) == before


def test_group_scope_cannot_raise_its_scope(ctx: DirectContext, two: dict[str, Any]) -> None:
    agent = two["agent"]
    before = dump(ctx)
    for key in ("cli_scope", "cli-scope"):
        code, _ = call_err(ctx, "groups-config-update", agent, **{key: "global"})
        assert code == "forbidden"
    assert dump(ctx) == before
    cfg = groups.get_container_config(ctx.db, two["main"])
    assert cfg is not None and cfg.cli_scope == "group"


def test_disabled_scope_forbids_everything(ctx: DirectContext, two: dict[str, Any]) -> None:
    groups.update_container_config(ctx.db, two["main"], {"cli_scope": "disabled"})
    for command in ("help", "groups-list", "sessions-list", "groups-help"):
        assert call_err(ctx, command, two["agent"])[0] == "forbidden"


def test_global_scope_reaches_everything_but_host_only(
    ctx: DirectContext, two: dict[str, Any]
) -> None:
    groups.update_container_config(ctx.db, two["main"], {"cli_scope": "global"})
    agent = two["agent"]
    assert len(call(ctx, "groups-list", agent)) == 2
    assert call(ctx, "groups-get", agent, id=two["other"])["id"] == two["other"]
    assert isinstance(call(ctx, "wirings-list", agent), list)
    assert call_err(ctx, "approvals-approve", agent, id="x")[0] == "forbidden"


def test_unknown_callers_are_denied(ctx: DirectContext) -> None:
    assert call_err(ctx, "groups-list", {"caller": "stranger"})[0] == "permission-denied"
    assert call_err(ctx, "groups-list", {"caller": "agent"})[0] == "permission-denied"


def test_approval_verbs_from_agents_wait_for_an_admin(
    ctx: DirectContext, two: dict[str, Any]
) -> None:
    agent = two["agent"]
    frame = {"id": "req-1", "command": "groups-update", "args": {"name": "Renamed"}}
    resp = dispatch(ctx, frame, agent)
    assert resp["ok"] is False and resp["error"]["code"] == "approval-pending"
    assert resp["id"] == "req-1"
    pend = approvals.list_approvals(ctx.db)
    assert len(pend) == 1
    a = pend[0]
    assert (a.action, a.title, a.session_id) == ("cli_command", "CLI: groups-update", two["s_main"])
    assert a.agent_group_id == two["main"] and a.expires_at is not None
    payload = loads_or(a.payload, {})
    assert payload["frame"] == {
        "id": "req-1",
        "command": "groups-update",
        "args": {"id": two["main"], "name": "Renamed"},
    }
    assert groups.require_agent_group(ctx.db, two["main"]).name == "Main"  # not applied yet

    # the approvals engine applies it on approval
    done = run_approved_cli_command(ctx, payload)
    assert done["ok"] and done["data"]["name"] == "Renamed"
    bad = run_approved_cli_command(ctx, {"nope": 1})
    assert bad["ok"] is False and bad["error"]["code"] == "invalid-args"


def test_approval_needs_a_known_session(ctx: DirectContext, two: dict[str, Any]) -> None:
    agent = {**two["agent"], "sessionId": "sess-gone"}
    assert call_err(ctx, "groups-update", agent, name="x")[0] == "handler-error"
    assert approvals.list_approvals(ctx.db) == []


def test_invalid_args_from_agents_are_refused_before_approval(
    ctx: DirectContext, two: dict[str, Any]
) -> None:
    code, _ = call_err(ctx, "groups-config-update", two["agent"], max_messages_per_prompt="many")
    assert code == "invalid-args"
    assert approvals.list_approvals(ctx.db) == []


def test_operator_approves_an_agent_cli_request(ctx: DirectContext, two: dict[str, Any]) -> None:
    from carapace.db.session import SessionPaths, init_session_folder

    init_session_folder(SessionPaths.of(ctx.home.data_dir, two["main"], two["s_main"]))
    call_err(ctx, "groups-update", two["agent"], name="Renamed")
    appr = approvals.list_approvals(ctx.db)[0]
    out = call(ctx, "approvals-approve", id=appr.approval_id)
    assert out["decision"] == "approved" and out["applied"] is True
    assert groups.require_agent_group(ctx.db, two["main"]).name == "Renamed"
