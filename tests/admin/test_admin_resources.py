"""Every verb of every admin resource, through ``dispatch`` as the operator."""

from __future__ import annotations

import json

import pytest
from admin_helpers import call, call_err, dump

from carapace.admin.direct import DirectContext
from carapace.admin.registry import commands, resource
from carapace.db import approvals, dropped, sessions, users
from carapace.permissions.approvals import request_approval
from carapace.sandbox import bwrap_unusable_reason


def test_registry_has_every_resource_and_a_tasks_slot() -> None:
    names = {c.split("-")[0] for c in commands()}
    assert {"groups", "wirings", "users", "roles", "members", "destinations"} <= names
    for res in ("messaging-groups", "user-dms", "dropped-messages", "approvals", "sessions"):
        assert resource(res) is not None
    from carapace.admin.registry import RESOURCE_MODULES

    assert "tasks" in RESOURCE_MODULES


def test_groups_crud_and_side_effects(ctx: DirectContext, main_id: str) -> None:
    listed = call(ctx, "groups-list")
    assert [g["folder"] for g in listed] == ["main"]
    assert call(ctx, "groups-get", id="main")["id"] == main_id
    assert call(ctx, "groups-get", id=main_id)["folder"] == "main"

    g = call(ctx, "groups-create", name="Work", folder="work")
    folder = ctx.home.group_dir("work")
    assert (folder / "CLAUDE.local.md").read_text().startswith("# Work")
    cfg = call(ctx, "groups-config-get", id=g["id"])
    assert cfg["agent_group_id"] == g["id"] and cfg["cli_scope"] == "group"

    assert call(ctx, "groups-update", id="work", name="Office")["name"] == "Office"
    assert call_err(ctx, "groups-update", id="work")[0] == "invalid-args"
    assert call_err(ctx, "groups-create", name="X", folder="work")[0] == "handler-error"
    assert call_err(ctx, "groups-create", name="X", folder="../evil")[0] == "invalid-args"

    restarted = call(ctx, "groups-restart", id="work", message="hello")
    assert restarted == {"restarted": 0, "rebuilt": False, "live": False}

    out = call(ctx, "groups-delete", id="work")
    assert out["deleted"] == g["id"] and out["folder_kept"] is True
    assert folder.exists()
    assert call_err(ctx, "groups-get", id="work")[0] == "not-found"


def test_group_delete_refuses_dependents_then_cascades(ctx: DirectContext, main_id: str) -> None:
    before = dump(ctx)
    code, msg = call_err(ctx, "groups-delete", id="main")
    assert code == "handler-error"
    assert "still used by" in msg and "--force" in msg
    assert dump(ctx) == before
    out = call(ctx, "groups-delete", id="main", force=True)
    assert out["cascaded"]["wirings"] == 1
    assert call(ctx, "wirings-list") == []
    assert call(ctx, "destinations-list") == []


def test_group_config_verbs(ctx: DirectContext) -> None:
    cfg = call(
        ctx,
        "groups-config-update",
        id="main",
        provider="anthropic",
        model="claude",
        max_messages_per_prompt="7",
        cli_scope="global",
    )
    assert (cfg["provider"], cfg["model"], cfg["max_messages_per_prompt"]) == (
        "anthropic",  # the Messages API loop: no NanoClaw name, stored as it is
        "claude",
        7,
    )
    assert cfg["cli_scope"] == "global"
    assert call(ctx, "groups-config-update", id="main", model="")["model"] is None
    assert call_err(ctx, "groups-config-update", id="main")[0] == "invalid-args"
    assert call_err(ctx, "groups-config-update", id="main", cli_scope="root")[0] == "invalid-args"

    cfg = call(
        ctx,
        "groups-config-add-mcp-server",
        id="main",
        name="fs",
        command="mcp-fs",
        args='["--root","/w"]',
        env='{"A":"1"}',
    )
    assert cfg["mcp_servers"] == {
        "fs": {"command": "mcp-fs", "args": ["--root", "/w"], "env": {"A": "1"}}
    }
    assert (
        call_err(ctx, "groups-config-add-mcp-server", id="main", name="x", command="y", args="{")[0]
        == "invalid-args"
    )
    assert call(ctx, "groups-config-remove-mcp-server", id="main", name="fs")["mcp_servers"] == {}
    assert call_err(ctx, "groups-config-remove-mcp-server", id="main", name="fs")[0] == "not-found"

    out = call(ctx, "groups-config-add-package", id="main", apt="ripgrep")
    assert out["installed"] == [] and out["config"]["packages_apt"] == []
    [failed] = out["failed"]
    assert (
        failed["package"] == "apt:ripgrep" and "does not install apt packages" in failed["reason"]
    )
    assert (
        call_err(ctx, "groups-config-add-package", id="main", apt="x; rm -rf /")[0]
        == "invalid-args"
    )
    assert call_err(ctx, "groups-config-add-package", id="main", pip="six==1.0")[0] == (
        "invalid-args"
    )
    assert call_err(ctx, "groups-config-add-package", id="main")[0] == "invalid-args"
    assert call_err(ctx, "groups-config-remove-package", id="main", apt="ripgrep")[0] == "not-found"
    assert call_err(ctx, "groups-config-remove-package", id="main", npm="nope")[0] == "not-found"


def test_groups_prompt_uses_composer_when_present(ctx: DirectContext) -> None:
    try:
        import carapace.runner.prompt  # noqa: F401
    except ImportError:
        code, msg = call_err(ctx, "groups-prompt", id="main")
        assert code == "handler-error" and "prompt composer" in msg
    else:
        assert isinstance(call(ctx, "groups-prompt", id="main"), str)


def test_groups_prompt_shows_what_the_groups_provider_gets(ctx: DirectContext) -> None:
    """On ``claude`` Claude Code reads the memory files itself: the prompt leaves them out
    and names Claude Code's tools; on ``anthropic`` the prompt holds them."""
    (ctx.home.group_dir("main") / "CLAUDE.local.md").write_text("MEMORYMARK\n")
    call(ctx, "groups-config-update", id="main", provider="anthropic")
    text = call(ctx, "groups-prompt", id="main")
    assert "MEMORYMARK" in text and "`read_file`" in text
    call(ctx, "groups-config-update", id="main", provider="claude")
    text = call(ctx, "groups-prompt", id="main")
    assert "MEMORYMARK" not in text and "`Read`" in text and "`read_file`" not in text


def test_messaging_groups_verbs(ctx: DirectContext) -> None:
    mg = call(ctx, "messaging-groups-create", channel_type="telegram", platform_id="42", name="Fam")
    assert mg["unknown_sender_policy"] == "strict" and mg["is_group"] == 0
    assert call(ctx, "messaging-groups-get", id=mg["id"])["name"] == "Fam"
    listed = call(ctx, "messaging-groups-list", channel_type="telegram")
    assert [m["id"] for m in listed] == [mg["id"]]
    up = call(
        ctx,
        "messaging-groups-update",
        id=mg["id"],
        unknown_sender_policy="request_approval",
        is_group="true",
    )
    assert (up["unknown_sender_policy"], up["is_group"]) == ("request_approval", 1)
    dup = call_err(ctx, "messaging-groups-create", channel_type="telegram", platform_id="42")
    assert dup[0] == "handler-error"
    call(ctx, "wirings-create", messaging_group_id=mg["id"], agent_group_id="main")
    code, msg = call_err(ctx, "messaging-groups-delete", id=mg["id"])
    assert code == "handler-error" and "still used by" in msg
    assert call(ctx, "messaging-groups-delete", id=mg["id"], force=True)["deleted"] == mg["id"]
    assert call_err(ctx, "messaging-groups-get", id=mg["id"])[0] == "not-found"


def test_wirings_verbs(ctx: DirectContext, main_id: str) -> None:
    mg = call(ctx, "messaging-groups-create", channel_type="tg", platform_id="7", name="Team")
    w = call(
        ctx,
        "wirings-create",
        messaging_group_id=mg["id"],
        agent_group_id="main",
        engage_mode="pattern",
        engage_pattern="^hey",
        priority="5",
        session_mode="per-thread",
    )
    assert (w["agent_group_id"], w["priority"], w["destination"]) == (main_id, 5, "team")
    dests = call(ctx, "destinations-list", agent_group_id="main")
    assert {"team", "cli"} == {d["local_name"] for d in dests}
    assert call(ctx, "wirings-get", id=w["id"])["engage_pattern"] == "^hey"
    assert len(call(ctx, "wirings-list", messaging_group_id=mg["id"])) == 1
    assert len(call(ctx, "wirings-list", agent_group_id="main")) == 2
    up = call(ctx, "wirings-update", id=w["id"], engage_mode="mention", priority=-1)
    assert (up["engage_mode"], up["priority"]) == ("mention", -1)
    assert call_err(ctx, "wirings-update", id=w["id"], engage_mode="always")[0] == "invalid-args"
    assert call_err(ctx, "wirings-update", id=w["id"], engage_pattern="(a+)+")[0] == "invalid-args"
    assert call(ctx, "wirings-delete", id=w["id"])["deleted"] == w["id"]
    assert call_err(ctx, "wirings-get", id=w["id"])[0] == "not-found"


def test_users_roles_members(ctx: DirectContext, main_id: str) -> None:
    u = call(ctx, "users-create", id="telegram:1", kind="telegram", display_name="Ann")
    assert u["display_name"] == "Ann"
    assert call_err(ctx, "users-create", id="telegram:1", kind="telegram")[0] == "handler-error"
    assert call_err(ctx, "users-create", id="nonamespace", kind="x")[0] == "invalid-args"
    assert call(ctx, "users-update", id="telegram:1", display_name="Anna")["display_name"] == "Anna"
    assert {x["id"] for x in call(ctx, "users-list")} == {"cli:local", "telegram:1"}
    assert call(ctx, "users-list", kind="telegram")[0]["id"] == "telegram:1"

    g = call(ctx, "roles-grant", user="telegram:1", role="admin", group="main")
    assert g["granted"] is True and g["agent_group_id"] == main_id
    assert (
        call(ctx, "roles-grant", user="telegram:1", role="admin", group="main")["granted"] is False
    )
    code, _ = call_err(ctx, "roles-grant", user="telegram:1", role="owner", group="main")
    assert code == "invalid-args"
    assert call_err(ctx, "roles-grant", user="telegram:1", role="god")[0] == "invalid-args"
    assert len(call(ctx, "roles-list", user="telegram:1")) == 1
    assert call(ctx, "users-get", id="telegram:1")["roles"][0]["role"] == "admin"
    # a scoped admin is a member; the membership cannot be removed while the role stands
    assert call(ctx, "members-list", group="main")[0]["user_id"] == "telegram:1"
    assert call_err(ctx, "members-remove", user="telegram:1", group="main")[0] == "invalid-args"
    assert call(ctx, "roles-revoke", user="telegram:1", role="admin", group="main")["revoked"]
    assert (
        call_err(ctx, "roles-revoke", user="telegram:1", role="admin", group="main")[0]
        == "not-found"
    )
    assert call(ctx, "members-remove", user="telegram:1", group=main_id)["removed"] is True
    assert call(ctx, "members-add", user="telegram:1", group="main")["added"] is True
    assert call_err(ctx, "members-add", user="telegram:9", group="main")[0] == "not-found"

    code, msg = call_err(ctx, "users-delete", id="telegram:1")
    assert code == "handler-error" and "--force" in msg
    assert call(ctx, "users-delete", id="telegram:1", force=True)["cascaded"] == {"members": 1}
    assert call_err(ctx, "users-get", id="telegram:1")[0] == "not-found"


def test_destinations_user_dms_dropped(ctx: DirectContext, main_id: str) -> None:
    work = call(ctx, "groups-create", name="Work", folder="work")
    d = call(
        ctx,
        "destinations-add",
        agent_group_id="main",
        local_name="work",
        target_type="agent",
        target_id="work",
    )
    assert d["target_id"] == work["id"]
    code, _ = call_err(
        ctx,
        "destinations-add",
        agent_group_id="main",
        local_name="Bad Name",
        target_type="agent",
        target_id="work",
    )
    assert code == "invalid-args"
    assert call(ctx, "destinations-remove", agent_group_id="main", local_name="work")["removed"]
    assert (
        call_err(ctx, "destinations-remove", agent_group_id="main", local_name="work")[0]
        == "not-found"
    )

    mg = call(ctx, "messaging-groups-list")[0]["id"]
    users.set_user_dm(ctx.db, "cli:local", "cli", mg)
    assert call(ctx, "user-dms-list")[0]["messaging_group_id"] == mg
    assert call(ctx, "user-dms-list", user="nobody:1") == []

    dropped.record_dropped(ctx.db, "tg", "99", "no_agent_wired")
    assert call(ctx, "dropped-messages-list")[0]["reason"] == "no_agent_wired"
    assert call(ctx, "dropped-messages-list", reason="sender_scope") == []
    assert call(ctx, "dropped-messages-clear", channel_type="tg", platform_id="99")["cleared"]
    assert (
        call_err(ctx, "dropped-messages-clear", channel_type="tg", platform_id="99")[0]
        == "not-found"
    )


def test_sessions_verbs(ctx: DirectContext, main_id: str) -> None:
    s = sessions.create_session(ctx.db, main_id, None)
    assert [x["id"] for x in call(ctx, "sessions-list", agent_group_id="main")] == [s.id]
    got = call(ctx, "sessions-get", id=s.id)
    assert got["status"] == "active" and got["folder_exists"] is False
    assert call(ctx, "sessions-close", id=s.id) == {"closed": s.id, "stopped": False}
    assert call(ctx, "sessions-list", status="active") == []
    assert call_err(ctx, "sessions-get", id="sess-nope")[0] == "not-found"


def test_approvals_list_every_kind_and_decide(ctx: DirectContext, main_id: str) -> None:
    s = sessions.create_session(ctx.db, main_id, None)
    a = approvals.create_approval(
        ctx.db,
        "install_packages",
        {"apt": ["x"]},
        session_id=s.id,
        agent_group_id=main_id,
        title="Install x",
    )
    mg = call(ctx, "messaging-groups-create", channel_type="tg", platform_id="5")["id"]
    sa = approvals.create_sender_approval(ctx.db, mg, main_id, "tg:5", {"t": 1}, "cli:local")
    approvals.create_channel_approval(ctx.db, mg, main_id, {"t": 2}, "cli:local")
    approvals.create_question(ctx.db, "q-1", s.id, "out-1", "Pick", ["a", "b"])
    listed = call(ctx, "approvals-list")
    assert sorted(x["kind"] for x in listed) == ["approval", "channel", "question", "sender"]
    assert {x["id"] for x in listed} >= {a.approval_id, "q-1", mg}
    assert sa is not None and sa.id in {x["id"] for x in listed}
    assert [x["id"] for x in call(ctx, "approvals-list", kind="question")] == ["q-1"]
    got = call(ctx, "approvals-get", id=a.approval_id)
    assert got["kind"] == "approval" and got["payload"] == {"apt": ["x"]}
    assert call(ctx, "approvals-get", id="q-1")["options_json"][0]["value"] == "a"
    assert call_err(ctx, "approvals-get", id="appr-none")[0] == "not-found"

    # the engine decides (the session has no folder: the agent's note makes one)
    out = call(ctx, "approvals-approve", id=a.approval_id)
    assert out["decision"] == "approved" and out["applied"]
    assert approvals.get_approval(ctx.db, a.approval_id) is None
    assert call_err(ctx, "approvals-reject", id=a.approval_id)[0] == "not-found"  # no card
    aid = request_approval(ctx, s.id, "install_packages", {"apt": ["y"]}, "Install y", "y?")
    [card] = [x for x in call(ctx, "approvals-list") if x["id"] == aid]
    assert card["code"] and card["expires_at"], card  # a real card: reply code and expiry
    out = call(ctx, "approvals-reject", id=card["code"])  # by reply code
    assert out["id"] == aid and out["decision"] == "rejected"
    assert call_err(ctx, "approvals-approve", id=aid)[0] == "handler-error"  # rejected already
    assert call_err(ctx, "approvals-approve", id=sa.id, user="tg:nobody")[0] == (
        "permission-denied"
    )
    assert approvals.get_sender_approval(ctx.db, sa.id) is not None  # unchanged


@pytest.mark.parametrize("command", sorted(c for c in commands() if c.endswith("-list")))
def test_every_list_verb_returns_json_rows(ctx: DirectContext, command: str) -> None:
    data = call(ctx, command)
    assert isinstance(data, list)
    json.dumps(data)
    assert call(ctx, command, limit=1) == data[:1]


@pytest.mark.skipif(bwrap_unusable_reason() is not None, reason="bubblewrap unusable")
def test_add_and_remove_a_real_npm_package(ctx: DirectContext) -> None:
    out = call(ctx, "groups-config-add-package", id="main", npm="is-number")
    assert out["installed"] == ["npm:is-number"] and out["failed"] == []
    assert out["config"]["packages_npm"] == ["is-number"]
    gone = call(ctx, "groups-config-remove-package", id="main", npm="is-number")
    assert gone["removed"] == ["removed npm:is-number"] and gone["config"]["packages_npm"] == []
