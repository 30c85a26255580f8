"""Access, approver choice and DM resolution (spec §6.2–6.4; NanoClaw area 6 tests 1–15,
31–36)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from carapace.db import groups, messaging, users
from carapace.permissions import access


class DmAdapter:
    def __init__(self, channel_type: str, fail: bool = False) -> None:
        self.channel_type = channel_type
        self.calls: list[str] = []
        self.fail = fail

    async def open_dm(self, handle: str) -> str:
        self.calls.append(handle)
        if self.fail:
            raise RuntimeError("boom")
        return f"dm-{handle}"


class NoDm:
    channel_type = "telegram"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def seed(db: sqlite3.Connection) -> tuple[str, str]:
    a = groups.create_agent_group(db, "A", "a").id
    b = groups.create_agent_group(db, "B", "b").id
    for uid in ("t:owner", "t:ga", "t:sa", "t:mem", "t:known"):
        users.upsert_user(db, uid, "t")
    users.grant_role(db, "t:owner", "owner")
    users.grant_role(db, "t:ga", "admin")
    users.grant_role(db, "t:sa", "admin", a)
    users.add_member(db, "t:mem", a)
    return a, b


def test_can_access(central: sqlite3.Connection) -> None:
    a, b = seed(central)
    assert access.can_access(central, "t:ghost", a) == access.AccessDecision(False, "unknown_user")
    assert access.can_access(central, "t:owner", b).reason == "owner"
    assert access.can_access(central, "t:ga", b).reason == "global_admin"
    assert access.can_access(central, "t:sa", a).reason == "scoped_admin"
    assert access.can_access(central, "t:sa", b) == access.AccessDecision(False, "not_member")
    assert access.can_access(central, "t:mem", a).allowed
    assert not access.can_access(central, "t:known", a).allowed
    assert access.has_admin_privilege(central, "t:sa", a)
    assert not access.has_admin_privilege(central, "t:sa", b)


def test_pick_approver(central: sqlite3.Connection) -> None:
    a, b = seed(central)
    assert access.pick_approver(central, a) == ["t:sa", "t:ga", "t:owner"]
    assert access.pick_approver(central, b) == ["t:ga", "t:owner"]
    assert access.pick_approver(central, None) == ["t:ga", "t:owner"]
    central.execute("DELETE FROM user_roles")
    assert access.pick_approver(central, a) == []


def test_ensure_user_dm(central: sqlite3.Connection) -> None:
    users.upsert_user(central, "telegram:111", "telegram", "Ann")
    users.upsert_user(central, "discord:222", "discord")
    users.upsert_user(central, "missing:1", "missing")
    dc = DmAdapter("discord")
    adapters: dict[str, Any] = {"telegram": NoDm(), "discord": dc}
    mg = run(access.ensure_user_dm(central, adapters, "telegram:111"))
    assert (mg.channel_type, mg.platform_id, mg.is_group) == ("telegram", "111", 0)
    assert users.get_user_dm(central, "telegram:111", "telegram").messaging_group_id == mg.id  # type: ignore[union-attr]
    m1 = run(access.ensure_user_dm(central, adapters, "discord:222"))
    m2 = run(access.ensure_user_dm(central, adapters, "discord:222"))
    assert m1.id == m2.id and m1.platform_id == "dm-222" and dc.calls == ["222"]
    assert run(access.ensure_user_dm(central, adapters, "missing:1")) is None
    users.upsert_user(central, "discord:333", "discord")
    assert run(access.ensure_user_dm(central, {"discord": DmAdapter("discord", True)},
                                     "discord:333")) is None  # fmt: skip
    assert users.get_user_dm(central, "discord:333", "discord") is None


def test_cli_owner_dm_is_the_cli_chat(central: sqlite3.Connection) -> None:
    cli = messaging.create_messaging_group(central, "cli", "local", name="cli")
    users.upsert_user(central, "cli:local", "cli")

    class Cli:
        channel_type = "cli"

    mg = run(access.ensure_user_dm(central, {"cli": Cli()}, "cli:local"))
    assert mg.id == cli.id


def test_pick_approval_delivery(central: sqlite3.Connection) -> None:
    for uid in ("telegram:111", "telegram:222", "discord:222"):
        users.upsert_user(central, uid, uid.split(":")[0])
    adapters: dict[str, Any] = {"telegram": NoDm(), "discord": DmAdapter("discord")}
    t = run(access.pick_approval_delivery(central, adapters, ["telegram:111", "telegram:222"],
                                          None))  # fmt: skip
    assert t.user_id == "telegram:111" and t.messaging_group.platform_id == "111"
    t = run(access.pick_approval_delivery(central, adapters, ["telegram:111", "discord:222"],
                                          "discord"))  # fmt: skip
    assert t.user_id == "discord:222"
    t = run(access.pick_approval_delivery(central, {"telegram": NoDm()}, ["telegram:111"],
                                          "discord"))  # fmt: skip
    assert t.user_id == "telegram:111"
    users.upsert_user(central, "telegram:999", "telegram")
    assert run(access.pick_approval_delivery(central, {}, ["telegram:999"], None)) is None
