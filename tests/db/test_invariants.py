"""Data-model invariants of the central DB, probed through the data-access layer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from carapace.db import destinations, groups, messaging, sessions, users
from carapace.db.dropped import list_dropped, record_dropped
from carapace.db.projection import project_group, write_routing
from carapace.db.session import SessionPaths, init_session_folder, open_inbound
from carapace.errors import ConflictError, InvariantError, NotFoundError, ValidationError


@pytest.fixture
def world(central: sqlite3.Connection) -> dict[str, str]:
    ag = groups.create_agent_group(central, "Main", "main")
    other = groups.create_agent_group(central, "Other", "other")
    mg = messaging.create_messaging_group(central, "telegram", "42", name="Family")
    users.upsert_user(central, "telegram:1", "telegram", "Ann")
    users.upsert_user(central, "telegram:2", "telegram", "Bob")
    return {"ag": ag.id, "other": other.id, "mg": mg.id}


def test_group_creation_makes_config_row(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    cfg = groups.get_container_config(central, world["ag"])
    assert cfg is not None and cfg.cli_scope == "group" and cfg.skills == '"all"'
    assert world["ag"].startswith("ag-")


@pytest.mark.parametrize("folder", ["", "../x", "a/b", "global", ".hidden", "x" * 65])
def test_bad_folder_names_are_refused(central: sqlite3.Connection, folder: str) -> None:
    with pytest.raises(ValidationError):
        groups.create_agent_group(central, "X", folder)
    assert central.execute("SELECT COUNT(*) FROM agent_groups").fetchone()[0] == 0


def test_owner_is_only_global(central: sqlite3.Connection, world: dict[str, str]) -> None:
    with pytest.raises(InvariantError):
        users.grant_role(central, "telegram:1", "owner", world["ag"])
    assert users.list_roles(central) == []
    assert users.grant_role(central, "telegram:1", "owner")
    assert users.owners(central) == ["telegram:1"]


def test_no_duplicate_global_roles(central: sqlite3.Connection, world: dict[str, str]) -> None:
    assert users.grant_role(central, "telegram:1", "admin")
    assert not users.grant_role(central, "telegram:1", "admin")
    # Even a raw insert cannot sneak a duplicate in (unique partial index).
    with pytest.raises(sqlite3.IntegrityError):
        central.execute(
            "INSERT INTO user_roles (user_id, role, agent_group_id, granted_at) "
            "VALUES ('telegram:1', 'admin', NULL, 'x')"
        )
    assert len(users.list_roles(central, user_id="telegram:1")) == 1


def test_scoped_admin_implies_membership(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    users.grant_role(central, "telegram:2", "admin", world["ag"])
    assert users.is_member(central, "telegram:2", world["ag"])
    assert not users.is_member(central, "telegram:2", world["other"])
    with pytest.raises(InvariantError):
        users.remove_member(central, "telegram:2", world["ag"])
    assert users.revoke_role(central, "telegram:2", "admin", world["ag"])
    assert users.remove_member(central, "telegram:2", world["ag"])


def test_role_checks(central: sqlite3.Connection, world: dict[str, str]) -> None:
    users.grant_role(central, "telegram:1", "admin")
    assert users.has_role(central, "telegram:1", "admin", world["ag"])
    assert not users.has_role(central, "telegram:1", "admin", world["ag"], exact=True)
    with pytest.raises(ValidationError):
        users.grant_role(central, "telegram:1", "superuser")
    with pytest.raises(NotFoundError):
        users.grant_role(central, "telegram:404", "admin")
    with pytest.raises(ValidationError):
        users.upsert_user(central, "no-namespace", "telegram")


def test_wiring_creates_destination_and_notifies(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    seen: list[str] = []

    def hook(_db: sqlite3.Connection, ag: str) -> None:
        seen.append(ag)

    destinations.add_projection_hook(hook)
    try:
        w = messaging.create_wiring(central, world["mg"], world["ag"])
    finally:
        destinations.remove_projection_hook(hook)
    assert w.id.startswith("mga-") and w.engage_mode == "mention"
    dests = destinations.list_destinations(central, world["ag"])
    assert [(d.local_name, d.target_type, d.target_id) for d in dests] == [
        ("family", "channel", world["mg"])
    ]
    assert seen == [world["ag"]]
    with pytest.raises(ConflictError):
        messaging.create_wiring(central, world["mg"], world["ag"])


def test_every_destination_change_calls_the_hook(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    seen: list[str] = []
    destinations.add_projection_hook(lambda _db, ag: seen.append(ag))
    try:
        destinations.add_destination(central, world["ag"], "helper", "agent", world["other"])
        destinations.remove_destination(central, world["ag"], "helper")
        messaging.create_wiring(central, world["mg"], world["other"])
        w = messaging.get_wiring_for(central, world["mg"], world["other"])
        assert w is not None
        messaging.update_wiring(central, w.id, priority=5)
        messaging.delete_wiring(central, w.id)
    finally:
        destinations._hooks.clear()
    assert seen == [world["ag"], world["ag"], world["other"], world["other"], world["other"]]


def test_bad_destinations_change_nothing(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    with pytest.raises(ValidationError):
        destinations.add_destination(central, world["ag"], "Bad Name", "agent", world["other"])
    with pytest.raises(ValidationError):
        destinations.add_destination(central, world["ag"], "x", "planet", world["other"])
    with pytest.raises(NotFoundError):
        destinations.add_destination(central, world["ag"], "x", "agent", "ag-missing")
    assert destinations.list_destinations(central) == []


def test_engage_validation(central: sqlite3.Connection, world: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        messaging.create_wiring(central, world["mg"], world["ag"], engage_mode="always")
    with pytest.raises(ValidationError):
        messaging.create_wiring(central, world["mg"], world["ag"], engage_mode="pattern")
    with pytest.raises(ValidationError):
        messaging.create_wiring(
            central, world["mg"], world["ag"], engage_mode="pattern", engage_pattern="(a+)+$"
        )
    with pytest.raises(ValidationError):
        messaging.create_wiring(
            central, world["mg"], world["ag"], engage_mode="pattern", engage_pattern="(["
        )
    assert messaging.list_wirings(central) == []


def test_null_engage_columns_read_as_defaults(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    central.execute(
        "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, "
        "session_mode, created_at) VALUES ('w', ?, ?, NULL, 'x')",
        (world["mg"], world["ag"]),
    )
    w = messaging.get_wiring(central, "w")
    assert w is not None
    assert (w.mode, w.scope, w.ignored, w.sessions) == ("mention", "all", "drop", "shared")


def test_delete_group_refuses_dependents_unless_forced(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    messaging.create_wiring(central, world["mg"], world["ag"])
    sessions.create_session(central, world["ag"], world["mg"])
    with pytest.raises(ConflictError, match="wirings"):
        groups.delete_agent_group(central, world["ag"])
    assert groups.get_agent_group(central, world["ag"]) is not None
    groups.delete_agent_group(central, world["ag"], force=True)
    assert groups.get_agent_group(central, world["ag"]) is None
    assert central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
    assert groups.get_container_config(central, world["ag"]) is None


def test_projection_into_live_sessions(
    central: sqlite3.Connection, world: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    s = sessions.create_session(central, world["ag"], world["mg"], "thread-9")
    paths = SessionPaths.of(data, world["ag"], s.id)
    init_session_folder(paths)
    messaging.create_wiring(central, world["mg"], world["ag"])
    destinations.add_destination(central, world["ag"], "helper", "agent", world["other"])
    assert project_group(central, data, world["ag"]) == 1
    assert write_routing(central, data, s)
    db = open_inbound(paths, readonly=True)
    rows = [tuple(r) for r in db.execute("SELECT * FROM destinations ORDER BY name")]
    assert rows == [
        ("family", "Family", "channel", "telegram", "42", None),
        ("helper", "Other", "agent", None, None, world["other"]),
    ]
    routing = tuple(db.execute("SELECT * FROM session_routing").fetchone())
    assert routing == (1, "telegram", "42", "thread-9")


def test_container_config_update(central: sqlite3.Connection, world: dict[str, str]) -> None:
    cfg = groups.update_container_config(
        central,
        world["ag"],
        {"provider": "anthropic", "packages_apt": ["jq"], "settings": {"bash": "off"}},
    )
    # anthropic (the Messages API loop) has no NanoClaw name: stored as it is (issue 17)
    assert cfg.provider == "anthropic" and cfg.packages_apt == '["jq"]'
    assert cfg.to_json()["packages"] == {"apt": ["jq"], "npm": []}
    with pytest.raises(ValidationError):
        groups.update_container_config(central, world["ag"], {"cli_scope": "root"})
    with pytest.raises(ValidationError):
        groups.update_container_config(central, world["ag"], {"colour": "red"})


def test_dropped_audit_counts_per_chat(central: sqlite3.Connection) -> None:
    record_dropped(central, "telegram", "9", "no_agent_wired", user_id="telegram:1")
    record_dropped(central, "telegram", "9", "unknown_sender_strict", sender_name="Bob")
    (row,) = list_dropped(central)
    assert row.message_count == 2 and row.reason == "unknown_sender_strict"
    assert row.user_id == "telegram:1" and row.sender_name == "Bob"


@pytest.mark.parametrize(("given", "stored"), [("anthropic", "anthropic"), ("Anthropic", "anthropic"),
                                               ("claude", "claude"), ("claude-agent-sdk", "claude"),
                                               ("Claude-Agent-SDK", "claude"), ("mock", "mock"),
                                               ("openai", "openai")])  # fmt: skip
def test_provider_names_are_stored_as_nanoclaw_names_them(
    central: sqlite3.Connection, world: dict[str, str], given: str, stored: str
) -> None:
    from carapace.runner.config import PROVIDER_ALIASES

    cfg = groups.update_container_config(central, world["ag"], {"provider": given})
    assert cfg.provider == stored
    group = groups.update_agent_group(central, world["ag"], agent_provider=given)
    assert group.agent_provider == stored
    # and carapace's runner reads the stored name as the provider that was asked for
    wanted = given.lower()
    assert PROVIDER_ALIASES.get(stored, stored) == PROVIDER_ALIASES.get(wanted, wanted)


def test_upsert_user_writes_only_what_changes(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    """The router calls ``upsert_user`` for every message (issue 19): an unchanged sender
    costs no write; a new display name is still stored, and no name keeps the old one."""
    before = central.total_changes
    assert users.upsert_user(central, "telegram:1", "telegram", "Ann").display_name == "Ann"
    assert users.upsert_user(central, "telegram:1", "telegram", None).display_name == "Ann"
    assert central.total_changes == before
    assert users.upsert_user(central, "telegram:1", "telegram", "Anna").display_name == "Anna"
    assert central.total_changes == before + 1
    assert users.get_user(central, "telegram:1").display_name == "Anna"  # type: ignore[union-attr]


def test_projection_skips_dangling_targets_in_name_order(
    central: sqlite3.Connection, world: dict[str, str]
) -> None:
    """The destination projection (one query since issue 19): channels with their chat's
    name, agents with theirs, in local-name order; a target that is gone is left out."""
    central.execute("PRAGMA foreign_keys=OFF")
    for name, kind, target in (("zeta", "channel", world["mg"]), ("alpha", "agent", world["other"]),
                               ("gone", "channel", "mg-missing"), ("lost", "agent", "ag-missing")):  # fmt: skip
        central.execute(
            "INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, "
            "created_at) VALUES (?, ?, ?, ?, '2026-01-01')",
            (world["ag"], name, kind, target),
        )
    got = destinations.projection(central, world["ag"])
    assert [(d.name, d.display_name, d.type) for d in got] == [
        ("alpha", "Other", "agent"), ("zeta", "Family", "channel"),
    ]  # fmt: skip
    assert got[1].platform_id == "42" and got[0].agent_group_id == world["other"]
