"""Contract driver for the Slack adapter on Slack's Events API: the fake Slack POSTs signed
events and interactions to a loopback HTTP server that hands them to the adapter's
``http_request`` (as the host's web server does at ``/slack/events``). Slack retries a
request that was not answered 2xx; the driver plays that retry after a restart."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from aiohttp import web

from carapace.channels.base import ChannelAdapter
from carapace.channels.slack_adapter import SlackChannel
from carapace.testing.fake_slack import FakeSlack

from .slack import GROUP, USERS, SlackDriver


class SlackEventsDriver(SlackDriver):
    channel_type = "slack"
    name = "slack_events"  # the test id

    def __init__(self) -> None:
        super().__init__()
        self.adapter: SlackChannel | None = None
        self._runner: web.AppRunner | None = None
        self._retry: asyncio.Task[None] | None = None

    async def _serve(self) -> str:
        async def post(request: web.Request) -> web.Response:
            adapter = self.adapter
            if adapter is None:
                return web.Response(status=503)
            status, headers, body = await adapter.http_request(
                await request.read(), dict(request.headers)
            )
            return web.Response(status=status, headers=headers, body=body)

        app = web.Application()
        app.router.add_post("/slack/events", post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}/slack/events"

    async def start(self, tmp_path: Path) -> ChannelAdapter:
        if self.slack is None:
            self.slack = FakeSlack()
            await self.slack.start()
            for name, uid in USERS.items():
                self.slack.add_user(uid, name.title())
            self.slack.add_channel(GROUP, "channel")
            self.slack.use_events_api(await self._serve())
        s = self.slack
        self.adapter = SlackChannel(s.bot_token, None, signing_secret=s.signing_secret,
                                    base_url=s.api_url)  # fmt: skip
        if s.unacked:  # what the last adapter did not take: Slack retries it
            self._retry = asyncio.get_running_loop().create_task(self._redeliver(self.adapter))
        return self.adapter

    async def _redeliver(self, adapter: SlackChannel) -> None:
        assert self.slack is not None
        await self.slack.wait_for(lambda: adapter.callbacks is not None, 15.0, "adapter start")
        await self.slack.redeliver()

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(BaseException):
                await self._retry
        if self._runner is not None:
            await self._runner.cleanup()
        await super().stop()


DRIVER = SlackEventsDriver
