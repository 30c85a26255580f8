"""Tests aimed at one-line bugs a mutation sample let through (issue 18): each fails with
the named mutant applied (docs/testing.md says how that was checked)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from carapace.channels.fake import make_event
from carapace.config import Settings
from carapace.db import approvals as dba
from carapace.db import groups
from carapace.db.destinations import add_destination
from carapace.permissions import approvals, system_actions
from carapace.permissions.approvals_host import HostContext

if TYPE_CHECKING:
    from host_rig import Rig  # tests/host/conftest.py


def _session(rig: Rig, folder: str = "ag", platform: str = "chan") -> tuple[str, Any]:
    ag = rig.agent(folder)
    mg = rig.chat(platform)
    rig.wire(mg, ag)
    rig.run(rig.host.route(make_event("hi", platform_id=platform, id=f"m-{folder}")))
    [s] = [s for s in rig.sessions() if s.agent_group_id == ag]
    return ag, s


def _status(rig: Rig, s: Any) -> dict[str, str]:
    return {d["message_out_id"]: d["status"] for d in rig.delivered(s)}


# --- delivery ---------------------------------------------------------------------------------


def test_no_adapter_is_never_marked_sent(rig: Rig) -> None:
    """A destination on a channel with no adapter: retried, then failed, never 'delivered'."""
    ag, s = _session(rig)
    tg = rig.chat("telegram:42", channel="telegram")  # no telegram adapter in this host
    add_destination(rig.db, ag, "tg", "channel", tg)
    r = rig.reply(s, {"text": "x"}, channel_type="telegram", platform_id="telegram:42")
    rig.run(rig.host.deliver_once(s.id))
    assert _status(rig, s).get(r) != "delivered"
    attempts = rig.inbound(s, f"SELECT attempts FROM carapace_delivery WHERE message_out_id='{r}'")
    assert attempts and attempts[0]["attempts"] >= 1
    for _ in range(8):
        rig.clock.advance(600)
        rig.run(rig.host.deliver_once(s.id))
    assert _status(rig, s)[r] == "failed"
    assert rig.channel.deliveries == []


def test_channel_acl_is_per_agent_group(rig: Rig) -> None:
    """Another agent group's destination to a chat does not open it to this one."""
    ag_a, s_a = _session(rig, "a", "chan-a")
    ag_b, _ = _session(rig, "b", "chan-b")
    other = rig.chat("other")
    add_destination(rig.db, ag_b, "other", "channel", other)  # b may, a may not
    r = rig.reply(s_a, {"text": "leak"}, channel_type="fake", platform_id="other")
    rig.run(rig.host.deliver_once(s_a.id))
    assert _status(rig, s_a) == {r: "failed"}
    assert [d.platform_id for d in rig.channel.deliveries] == []
    assert ag_a != ag_b


# --- approvals --------------------------------------------------------------------------------


def _request(rig: Rig, action: str) -> tuple[str, Any, str]:
    ag, s = _session(rig, "main", "chat-1")
    rig.user("fake:owner", role="owner")
    ctx = HostContext(rig.host)
    if action == "cli_command":
        aid = approvals.request_approval(ctx, s.id, "cli_command",
                                         {"argv": ["groups", "list"]}, "CLI", "run it?")  # fmt: skip
    else:
        content: dict[str, Any] = {"action": action}
        content.update({"name": "Helper", "instructions": "x"} if action == "create_agent"
                       else {"apt": ["curl"]})  # fmt: skip
        assert system_actions.handle_system_action(ctx, s.id, content)
        aid = dba.list_approvals(rig.db)[0].approval_id
    assert aid is not None
    return ag, s, aid


@pytest.mark.parametrize("action", ["create_agent", "install_packages", "cli_command"])
def test_plain_member_cannot_approve(rig: Rig, action: str) -> None:
    ag, _, aid = _request(rig, action)
    rig.user("fake:member", member_of=ag)
    out = approvals.decide(HostContext(rig.host), aid, True, "fake:member")
    assert out["status"] == "unauthorised"
    assert [a.approval_id for a in dba.list_approvals(rig.db)] == [aid]  # still pending
    assert groups.get_agent_group_by_folder(rig.db, "helper") is None
    cfg = groups.get_container_config(rig.db, ag)
    assert cfg is not None and cfg.packages_apt == "[]"


def test_approval_decided_after_expiry_does_not_apply(rig: Rig) -> None:
    """The expiry pass has not run yet, but the approval's time is up: the click is refused."""
    ag, s, aid = _request(rig, "install_packages")
    rig.clock.advance(Settings().approval_ttl_s + 1)  # no tick: the pass has not run
    out = approvals.decide(HostContext(rig.host), aid, True, "fake:owner")
    assert out["status"] == "gone" and "expired" in out["message"]
    cfg = groups.get_container_config(rig.db, ag)
    assert cfg is not None and cfg.packages_apt == "[]"
    assert dba.list_approvals(rig.db) == []
    assert "expired" in json.loads(rig.inbound(s)[-1]["content"])["text"]


def test_approval_just_before_expiry_applies(rig: Rig) -> None:
    _ag, s, aid = _request(rig, "install_packages")
    rig.clock.advance(Settings().approval_ttl_s - 1)

    async def decide() -> dict[str, str]:  # applying restarts the group's runner: in a loop
        return approvals.decide(HostContext(rig.host), aid, True, "fake:owner")

    assert rig.run(decide())["status"] == "approved"
    rig.stored()
    # the handler ran: apt packages are refused per group, and the agent is told why (the
    # approval's note, and the install's result once its thread is done, whichever is last)
    note = json.loads(rig.inbound(s)[-1]["content"])["text"]
    assert "curl" in note and "does not install apt packages" in note
