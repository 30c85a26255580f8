"""Malformed input: the right error code, and nothing changed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from admin_helpers import call, call_err, dump

from carapace.admin.direct import DirectContext
from carapace.admin.dispatch import HOST_CALLER, dispatch, handle_line
from carapace.admin.registry import resolve

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("frobnicate-list", {}, "unknown-command"),
    ("groups-frob", {}, "unknown-command"),
    ("groups", {}, "unknown-command"),
    ("groups-create", {"name": "x"}, "invalid-args"),  # missing --folder
    ("groups-get", {}, "invalid-args"),
    ("groups-list", {"bogus": "1"}, "invalid-args"),
    ("groups-list", {"limit": "lots"}, "invalid-args"),
    ("groups-list", {"limit": "0"}, "invalid-args"),
    ("groups-get", {"id": True}, "invalid-args"),  # --id with no value
    (
        "messaging-groups-create",
        {"channel-type": "t", "platform-id": "1", "unknown-sender-policy": "maybe"},
        "invalid-args",
    ),
    (
        "wirings-create",
        {"messaging_group_id": "mg-x", "agent_group_id": "main", "engage_mode": "sometimes"},
        "invalid-args",
    ),
    ("wirings-create", {"messaging_group_id": "mg-x", "agent_group_id": "main"}, "not-found"),
    ("groups-get", {"id": "ag-0-nothere"}, "not-found"),
    ("groups-delete", {"id": "ag-0-nothere"}, "not-found"),
    ("sessions-close", {"id": "sess-0-nothere"}, "not-found"),
    ("users-update", {"id": "x:1", "display_name": "n"}, "not-found"),
    ("roles-grant", {"user": "x:1", "role": "admin"}, "not-found"),
    ("members-add", {"user": "cli:local", "group": "nope"}, "not-found"),
    (
        "destinations-add",
        {
            "agent_group_id": "main",
            "local_name": "x",
            "target_type": "channel",
            "target_id": "mg-nope",
        },
        "not-found",
    ),
    (
        "destinations-add",
        {"agent_group_id": "main", "local_name": "x", "target_type": "pigeon", "target_id": "y"},
        "invalid-args",
    ),
    ("groups-config-update", {"id": "main", "max_messages_per_prompt": "0"}, "invalid-args"),
    (
        "groups-config-add-mcp-server",
        {"id": "main", "name": "a", "command": "b", "env": "[1]"},
        "invalid-args",
    ),
    ("roles-grant-extra", {"user": "cli:local", "role": "admin"}, "invalid-args"),
]


@pytest.mark.parametrize(("command", "args", "code"), CASES)
def test_bad_input_changes_nothing(
    ctx: DirectContext, command: str, args: dict[str, Any], code: str
) -> None:
    before = dump(ctx)
    got, message = call_err(ctx, command, **args)
    assert got == code, message
    assert message
    assert dump(ctx) == before


def test_positional_ids_with_dashes(ctx: DirectContext, main_id: str) -> None:
    # NanoClaw could not take these (spec §11.1 item 10)
    assert resolve(f"groups-get-{main_id}") == ("groups-get", main_id)
    assert resolve("groups-config-get-main") == ("groups-config-get", "main")
    assert resolve("groups-config-get") == ("groups-config-get", None)
    assert call(ctx, f"groups-get-{main_id}")["folder"] == "main"
    out = call(ctx, f"groups-config-add-package-{main_id}", apt="jq")
    assert out["failed"][0]["package"] == "apt:jq"
    assert call_err(ctx, f"groups-get-{main_id}", id=main_id)[0] == "invalid-args"


def test_handle_line_frames(ctx: DirectContext) -> None:
    out = json.loads(handle_line(ctx, b"{not json\n", HOST_CALLER))
    assert out["id"] == "unknown" and out["error"]["code"] == "transport-error"
    out = json.loads(handle_line(ctx, b'["a"]', HOST_CALLER))
    assert out["error"]["code"] == "transport-error"
    out = json.loads(handle_line(ctx, b'{"id":"f1","args":{}}', HOST_CALLER))
    assert (out["id"], out["error"]["code"]) == ("f1", "transport-error")
    out = json.loads(handle_line(ctx, b'{"id":"f2","command":"x","args":[]}', HOST_CALLER))
    assert out["error"]["code"] == "transport-error"
    out = json.loads(handle_line(ctx, b"\xff\xfe", HOST_CALLER))
    assert out["error"]["code"] == "transport-error"
    raw = handle_line(ctx, b'{"id":"f3","command":"groups-list","args":{}}\n', HOST_CALLER)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    out = json.loads(raw)
    assert out["id"] == "f3" and out["ok"] is True and out["data"][0]["folder"] == "main"


def test_dispatch_never_raises_on_garbage(ctx: DirectContext) -> None:
    resp = dispatch(ctx, {"id": 5, "command": 3}, HOST_CALLER)
    assert resp == {
        "id": "unknown",
        "ok": False,
        "error": {"code": "transport-error", "message": resp["error"]["message"]},
    }
