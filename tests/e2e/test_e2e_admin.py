"""Issue 7 end to end: ``carapace admin`` through a running host's socket and directly,
its ``--json`` output, the side effects (folder, config, destinations, a running
session's projection) and bad input (right error code, non-zero exit, nothing changed)."""

from __future__ import annotations

from e2e_helpers import E2E, rows, wait_for


def _create_wired_group(e2e: E2E, folder: str, platform: str) -> dict[str, str]:
    g = e2e.ok("groups", "create", "--name", folder.title(), "--folder", folder)
    mg = e2e.ok("messaging-groups", "create", "--channel-type", "cli", "--platform-id", platform)
    w = e2e.ok("wirings", "create", "--messaging-group-id", mg["id"], "--agent-group-id", g["id"])
    assert (e2e.home / "groups" / folder).is_dir()
    assert rows(e2e.central, "SELECT 1 FROM container_configs WHERE agent_group_id=?", (g["id"],))
    assert rows(e2e.central, "SELECT 1 FROM agent_destinations WHERE agent_group_id=? AND "
                "target_id=?", (g["id"], mg["id"]))  # fmt: skip
    return {"group": g["id"], "mg": mg["id"], "wiring": w["id"]}


def test_admin_through_the_socket_reaches_a_running_session(e2e: E2E) -> None:
    e2e.start_host()
    assert e2e.send("start a session").returncode == 0
    [d] = e2e.sessions()
    made = _create_wired_group(e2e, "second", "other")
    main = e2e.main_ag()
    e2e.ok("destinations", "add", "--agent-group-id", main, "--local-name", "second",
           "--target-type", "agent", "--target-id", made["group"])  # fmt: skip
    wait_for(lambda: ("second",) in rows(d / "inbound.db", "SELECT name FROM destinations"),
             what="projection into the running session")  # fmt: skip
    code, _, err = e2e.admin("groups", "list")
    assert code == 0 and "directly" not in err  # through the host
    e2e.stop_host()


def test_admin_without_a_host_applies_directly(e2e: E2E) -> None:
    code, data, err = e2e.admin("groups", "list")
    assert code == 0 and "no host running" in err and [g["folder"] for g in data] == ["main"]
    _create_wired_group(e2e, "third", "elsewhere")


def test_bad_input_is_refused_and_changes_nothing(e2e: E2E) -> None:
    e2e.start_host()
    before = rows(e2e.central, "SELECT COUNT(*) FROM agent_groups")
    cases = [
        (("nosuch", "list"), "unknown-command"),
        (("groups", "create", "--folder", "x"), "invalid-args"),  # --name missing
        (
            ("messaging-groups", "update", "--id", e2e.cli_mg(), "--unknown-sender-policy", "x"),
            "invalid-args",
        ),
        (("groups", "get", "ag-nope"), "not-found"),
        (("groups", "create", "--name", "X", "--folder", "../evil"), "invalid-args"),
    ]
    for words, want in cases:
        code, data, _ = e2e.admin(*words)
        assert code == 1 and data["error"]["code"] == want, (words, data)
    assert rows(e2e.central, "SELECT COUNT(*) FROM agent_groups") == before
    [(policy,)] = rows(e2e.central, "SELECT unknown_sender_policy FROM messaging_groups")
    assert policy == "public"
    assert not (e2e.home / "evil").exists()
    e2e.stop_host()
