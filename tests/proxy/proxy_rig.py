"""An ``EgressProxy`` on its own event loop thread, for the real (sync) SDKs to call."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai

from carapace.db.central import open_central
from carapace.proxy.keys import KeyStore
from carapace.proxy.retry import RetryPolicy
from carapace.proxy.server import EgressProxy, SessionRoute
from carapace.proxy.usage import UsageStore
from carapace.runner.providers._common import PLACEHOLDER_KEY, PROXY_BASE

T = TypeVar("T")
ANT_KEY = "sk-ant-host-only-0123456789"
OAI_KEY = "sk-oai-host-only-9876543210"
GROUP = "ag-test"


class ProxyRig:
    def __init__(self, tmp_path: Path, upstream: str, **route: Any) -> None:
        self.db_path = tmp_path / "data" / "v2.db"
        self.db: sqlite3.Connection = open_central(self.db_path)
        self.usage = UsageStore(self.db_path)
        self.sleeps: list[float] = []
        self.warnings: list[tuple[str, str]] = []
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        self.clients: list[Any] = []  # the SDK clients made, closed by close()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def fake_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.proxy = EgressProxy(
            KeyStore({"ANTHROPIC_API_KEY": ANT_KEY, "OPENAI_API_KEY": OAI_KEY}),
            usage=self.usage, db=self.db, retry=RetryPolicy(), sleep=fake_sleep,
            now=lambda: self.now, on_warning=lambda g, t: self.warnings.append((g, t)),
            socket_dir=tmp_path / "sock",
        )  # fmt: skip
        ups = {"anthropic": upstream.rstrip("/"), "openai": upstream.rstrip("/") + "/v1"}
        self.route = SessionRoute("sess-1", GROUP, group_name="Test Group", upstreams=ups,
                                  **route)  # fmt: skip
        self.socket = self.call(self._open())

    async def _open(self) -> Path:
        path = self.proxy.open_session(self.route)
        await asyncio.sleep(0.01)
        return path

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def anthropic(self) -> anthropic.Anthropic:
        transport = _httpx(anthropic).HTTPTransport(uds=str(self.socket))
        client = anthropic.Anthropic(
            api_key=PLACEHOLDER_KEY, base_url=f"{PROXY_BASE}/anthropic", max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=transport),
        )  # fmt: skip
        self.clients.append(client)
        return client

    def openai(self) -> openai.OpenAI:
        transport = _httpx(openai).HTTPTransport(uds=str(self.socket))
        client = openai.OpenAI(
            api_key=PLACEHOLDER_KEY, base_url=f"{PROXY_BASE}/openai", max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=transport),
        )  # fmt: skip
        self.clients.append(client)
        return client

    def rows(self) -> list[sqlite3.Row]:
        self.usage.flush()
        return self.db.execute("SELECT * FROM carapace_usage ORDER BY id").fetchall()

    def close(self) -> None:
        """Everything the rig opened, closed: the SDKs' connections, the proxy, its loop (a
        loop left to the garbage collector closes its descriptors whenever it is collected,
        in the middle of a later test)."""
        for client in self.clients:
            client.close()

        async def stop() -> None:
            await self.proxy.close()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        assert not self.thread.is_alive(), "the proxy's loop did not stop"
        self.loop.close()
        self.usage.close()
        self.db.close()


def _httpx(sdk: Any) -> Any:
    import importlib

    roots = [c.__module__.split(".")[0] for c in sdk.DefaultHttpxClient.__mro__]
    return importlib.import_module(next(r for r in roots if r.startswith("httpx")))
