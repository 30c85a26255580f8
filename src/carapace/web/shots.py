"""``carapace web screenshots``: a demo home with a running host and web server, a few
conversations, a task, a pending approval and some recorded usage, photographed page by
page in headless Chromium (Debian's ``chromium``, driven by Playwright; nothing is
downloaded). Needs the ``playwright`` Python package (a dev dependency)."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from carapace.config import Home
from carapace.errors import ConfigError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAGES = (("overview", "/"), ("chat", "/chat/{main}"), ("sessions", "/sessions"),
         ("session", "/sessions/{sid}"), ("approvals", "/approvals"), ("tasks", "/tasks"),
         ("usage", "/usage"), ("health", "/health"))  # fmt: skip


def take_screenshots(out: Path, chromium: str) -> list[Path]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ConfigError("screenshots need the playwright Python package (pip install playwright)")
    if not Path(chromium).exists():
        raise ConfigError(f"no Chromium at {chromium} (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo = _Demo(Path(tmp))
        try:
            link, main, sid = demo.prepare()
            shots: list[Path] = []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
                page = browser.new_page(viewport={"width": 1200, "height": 820})
                page.goto(link)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(demo.url + "/")
                for name, path in PAGES:
                    page.goto(demo.url + path.format(main=main, sid=sid))
                    if name == "chat":
                        page.wait_for_selector("#log li.msg.out")
                    target = out / f"{name}.png"
                    page.screenshot(path=str(target), full_page=False)
                    shots.append(target)
                phone = browser.new_page(viewport={"width": 390, "height": 760})
                phone.context.add_cookies(page.context.cookies())  # type: ignore[arg-type]
                phone.goto(demo.url + f"/chat/{main}")
                phone.wait_for_selector("#log li.msg.out")
                phone.screenshot(path=str(out / "chat-phone.png"))
                shots.append(out / "chat-phone.png")
                browser.close()
            return shots
        finally:
            demo.close()


class _Demo:
    def __init__(self, root: Path) -> None:
        self.home = Home(root / "home")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.host: Any = None
        self.web: Any = None

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    @property
    def url(self) -> str:
        return str(self.web.url)

    def prepare(self) -> tuple[str, str, str]:
        from carapace.bootstrap import init_home
        from carapace.timefmt import utcnow
        from carapace.web.auth import make_login_link

        init_home(self.home)
        self.home.config_file.write_text('runner_backend = "subprocess"\ntimezone = "Europe/Berlin"\n'
                                         "[web]\nenabled = true\nport = 0\n")  # fmt: skip
        self.thread.start()
        self.call(self._start())
        link = make_login_link(self.home, "demo", "owner", utcnow()).replace(
            "http://127.0.0.1:0", self.url)  # fmt: skip
        return (link, *self.call(self._populate()))

    async def _start(self) -> None:
        from carapace.admin.dispatch import dispatch
        from carapace.host.client import build_host
        from carapace.web.server import start_web

        self.host = build_host(self.home, admin=dispatch)
        await self.host.start()
        self.web = await start_web(self.host)

    async def _populate(self) -> tuple[str, str]:
        from carapace.db import groups
        from carapace.db.dropped import record_dropped
        from carapace.host.tasks import create_task
        from carapace.permissions.approvals import request_approval
        from carapace.permissions.approvals_host import HostContext
        from carapace.timefmt import iso, utcnow

        host = self.host
        g = groups.get_agent_group_by_folder(host.db, "main")
        if g is None:
            raise ConfigError("the demo home has no agent group 'main'")
        main = g.id
        chat = host.adapters["web"]
        from carapace.web.routes_chat import ensure_chat

        ensure_chat(host.db, "demo", main, host.now())
        for text in ("What is on my calendar tomorrow?", "Summarise the sales report, please."):
            await chat.user_says("demo", main, text)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                last = chat.store.history(f"demo/{main}", limit=1)
                if last and last[-1].direction == "out":
                    break
                await asyncio.sleep(0.1)
        sid = host.db.execute(
            "SELECT id FROM sessions WHERE agent_group_id=? AND messaging_group_id IS NOT NULL "
            "ORDER BY last_active DESC LIMIT 1", (main,)).fetchone()[0]  # fmt: skip
        payload = {"frame": {"id": "demo", "command": "groups-list", "args": {}}, "question": "q"}
        request_approval(HostContext(host), sid, "cli_command", payload, "CLI: groups-list",
                         "Agent Main wants to run `carapace admin groups-list`.")  # fmt: skip
        for prompt, rec in (
            ("Send me the sales overview", "0 9 * * 1-5"),
            ("Water the plants reminder", "0 7 * * *"),
        ):
            create_task(host.db, host.home, main, prompt=prompt, at=None, recurrence=rec,
                        tz="Europe/Berlin", catch_up=None, script=None, now=host.now())  # fmt: skip
        now = utcnow()
        for day in range(7):
            for model, tokens in (("claude-sonnet-4-5", 4000 + 900 * day), ("gpt-4o-mini", 2500)):
                host.db.execute(
                    "INSERT INTO carapace_usage (at, agent_group_id, session_id, provider, model,"
                    " input_tokens, output_tokens, latency_ms, status) VALUES (?,?,?,?,?,?,?,?,200)",
                    (iso(now - timedelta(days=day)), main, sid,
                     "anthropic" if model.startswith("claude") else "openai", model, tokens,
                     tokens // 4, 850.0),
                )  # fmt: skip
        record_dropped(
            host.db, "webhook", "unknown-sender", "no_agent_wired", sender_name="printer"
        )
        return main, str(sid)

    def close(self) -> None:
        async def stop() -> None:
            if self.web is not None:
                await self.web.stop()
            if self.host is not None:
                await self.host.stop()
                self.host.close()

        if self.thread.is_alive():
            try:
                self.call(stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        self.loop.close()
