"""In real headless Chromium, as a person would: sign in with the link, chat and see the
reply appear live, approve a card, pause a task, read a session. One browser and one host
for the module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, chromium_missing
from web_rig import WebRig, wait_for

from carapace.db import groups
from carapace.db.sessions import list_sessions
from carapace.permissions.approvals import request_approval
from carapace.permissions.approvals_host import HostContext

_missing = chromium_missing()
if _missing is not None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError(f"CI=true and the browser tests cannot run: {_missing}")
    pytest.skip(_missing, allow_module_level=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebRig]:
    r = WebRig(Path(tmp_path_factory.mktemp("browser")))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def page(rig: WebRig) -> Iterator[Any]:
    with chromium() as browser:
        ctx = browser.new_context(viewport={"width": 1100, "height": 800})
        ctx.set_default_timeout(20_000)
        p = ctx.new_page()
        p.goto(rig.link("alice", "owner").replace("http://127.0.0.1:0", rig.url))
        p.get_by_role("button", name="Sign in").click()
        p.wait_for_url(rig.url + "/")
        yield p
        ctx.close()


def _main(rig: WebRig) -> str:
    return str(rig.on_loop(lambda: groups.get_agent_group_by_folder(rig.host.db, "main")).id)


def test_signed_in_and_the_cookie_is_httponly(rig: WebRig, page: Any) -> None:
    assert page.get_by_role("heading", name="Overview").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "carapace_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""


def test_chat_and_see_the_reply_live(rig: WebRig, page: Any) -> None:
    page.goto(f"{rig.url}/chat/{_main(rig)}")
    page.wait_for_selector("section.chat[data-live='1']")
    page.get_by_label("Message").fill("hello from chromium")
    page.keyboard.press("Enter")
    page.locator("#log li.msg.in", has_text="hello from chromium").wait_for()
    page.locator("#log li.msg.out", has_text="hello from chromium").wait_for()  # mock quotes it


def test_approve_a_card(rig: WebRig, page: Any) -> None:
    main = _main(rig)
    sid = wait_for(lambda: next((s.id for s in rig.on_loop(
        lambda: list_sessions(rig.host.db, agent_group_id=main)) if s.messaging_group_id), None))  # fmt: skip
    payload = {"frame": {"id": "f1", "command": "groups-list", "args": {}}, "question": "q"}
    aid = rig.on_loop(lambda: request_approval(HostContext(rig.host), sid, "cli_command", payload,
                                               "CLI: groups-list", "Run groups-list?"))  # fmt: skip
    page.goto(f"{rig.url}/inbox")
    page.wait_for_selector("section.chat[data-live='1']")
    card = page.locator("#log li.msg", has_text="Run groups-list?")
    card.get_by_role("button", name="Approve").click()
    wait_for(lambda: rig.on_loop(lambda: rig.host.db.execute(
        "SELECT status FROM carapace_cards WHERE card_id=?", (aid,)).fetchone()[0]) != "pending",
        what="the decision")  # fmt: skip
    # the decided card is edited in place, live: its buttons are gone
    page.locator("#log li.msg", has_text="Run groups-list?").get_by_role(
        "button", name="Approve"
    ).wait_for(state="detached")


def test_pause_a_task(rig: WebRig, page: Any) -> None:
    page.goto(f"{rig.url}/tasks")
    page.get_by_text("New task").click()
    page.get_by_label("Prompt").fill("Water the plants")
    page.get_by_label("Cron (repeat)").fill("0 7 * * *")
    page.get_by_role("button", name="Create").click()
    row = page.locator("tr", has_text="Water the plants")
    row.get_by_role("button", name="Pause").click()
    page.locator("tr", has_text="Water the plants").get_by_role("button", name="Resume").wait_for()
    assert "paused" in page.locator("tr", has_text="Water the plants").inner_text()


def test_read_a_session(rig: WebRig, page: Any) -> None:
    page.goto(f"{rig.url}/sessions")
    page.locator("tr", has_text="alice").locator("a[href^='/sessions/']").first.click()
    page.wait_for_url("**/sessions/sess-*")
    assert page.locator("table", has_text="hello from chromium").is_visible()
    assert "delivered" in page.locator("table").inner_text()


def test_phone_width_has_no_sideways_scroll(rig: WebRig, page: Any) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(f"{rig.url}/chat/{_main(rig)}")
    page.wait_for_selector("section.chat[data-live='1']")
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
        .map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)""")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), wide
    page.set_viewport_size({"width": 1100, "height": 800})
