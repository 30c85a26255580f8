"""A real host (subprocess runners, mock provider) with its web server, on a loop in a
background thread; tests drive it with Starlette's test client or a real browser."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from carapace.admin.dispatch import dispatch
from carapace.bootstrap import init_home
from carapace.config import Home
from carapace.host.client import build_host
from carapace.host.host import Host
from carapace.timefmt import utcnow
from carapace.web.auth import make_login_link
from carapace.web.server import WebServer, start_web

HOOK_SECRET = "s3cret-for-tests"


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
        time.sleep(0.02)


class WebRig:
    def __init__(self, root: Path, *, extra_toml: str = "", hooks: str = "",
                 extra_secrets: str = "") -> None:  # fmt: skip
        self.home = Home(root / "home")
        init_home(self.home)
        self.home.config_file.write_text(
            'runner_backend = "subprocess"\n' + extra_toml
            + "[web]\nenabled = true\nport = 0\n" + hooks
        )  # fmt: skip
        (self.home.root / "secrets.env").write_text(
            f"WEBHOOK_CI_SECRET={HOOK_SECRET}\n" + extra_secrets
        )
        (self.home.root / "secrets.env").chmod(0o600)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host: Host = self.call(self._start())
        assert self.web is not None

    async def _start(self) -> Host:
        host = build_host(self.home, admin=dispatch)
        await host.start()
        self.web: WebServer | None = await start_web(host)
        return host

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self.call(run())

    @property
    def url(self) -> str:
        assert self.web is not None
        return self.web.url

    def client(self) -> TestClient:
        assert self.web is not None
        return TestClient(self.web.app.asgi, base_url="http://testserver")

    def link(self, name: str = "alice", role: str = "owner") -> str:
        return make_login_link(self.home, name, role, utcnow())

    def login(self, client: TestClient, name: str = "alice", role: str = "owner") -> str:
        """Sign ``client`` in; returns its CSRF token."""
        token = self.link(name, role).split("token=", 1)[1]
        r = client.post("/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 303, r.text
        page = client.get("/chat")
        m = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert m, page.text
        return m.group(1)

    def close(self) -> None:
        async def stop() -> None:
            if self.web is not None:
                await self.web.stop()
            await self.host.stop()
            self.host.close()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
