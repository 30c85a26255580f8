"""The Slack adapter's Events API mode (``carapace channels add slack --mode events``): no
connection to open; Slack POSTs to the host's web server (``/slack/events``), which hands
each request to ``http_request``. See ``carapace.channels.slack``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from carapace.channels.slack import SlackError

if TYPE_CHECKING:
    from carapace.channels.base import ChannelCallbacks

logger = logging.getLogger(__name__)
CHANNEL = "slack"


def slack_error(exc: SlackApiError) -> str:
    """The ``error`` of Slack's answer (e.g. ``invalid_auth``)."""
    try:
        return str(exc.response.get("error") or "unknown_error")
    except Exception:
        return "unknown_error"


class EventsMode:
    """Mixed into ``SlackChannel``: what it does when Slack calls in over HTTP."""

    mode: str
    client: AsyncWebClient | None
    app: AsyncApp | None
    callbacks: ChannelCallbacks | None
    bot_user_id: str
    status: str
    connect_timeout: float
    _closing: bool
    _task: asyncio.Task[None] | None

    async def _start_events(self) -> None:
        """Events API: nothing to connect; learn the bot's user id, then take requests
        (``http_request``) from the web server."""
        assert self.client is not None
        try:
            who = await asyncio.wait_for(self.client.auth_test(), self.connect_timeout)
        except SlackApiError as exc:
            err = slack_error(exc)
            self.status = f"failed: Slack rejected the bot token ({err})"
            raise SlackError(f"Slack rejected the bot token ({err}); run `carapace channels "
                             "add slack --mode events` with a working one")  # fmt: skip
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # events are still verified and routed; the bot's own id is learnt in the
            # background (until then a mention of it is not recognised as one)
            logger.warning("slack: auth.test failed (%s); taking events all the same", exc)
            self._task = asyncio.get_running_loop().create_task(self._learn_bot_id())
        else:
            self.bot_user_id = str(who.get("user_id") or "")
        self.status = "connected (events over the web server at /slack/events)"
        if self.callbacks is not None:
            self.callbacks.on_ready(CHANNEL)

    async def _learn_bot_id(self) -> None:
        delay = 1.0
        while not self._closing and self.client is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
            try:
                who = await asyncio.wait_for(self.client.auth_test(), self.connect_timeout)
            except (SlackApiError, SlackClientError, aiohttp.ClientError, OSError,
                    TimeoutError) as exc:  # fmt: skip
                logger.warning("slack: auth.test failed (%s); next try in %.0f s", exc, delay)
                continue
            self.bot_user_id = str(who.get("user_id") or "")
            return

    async def http_request(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One request Slack POSTed to ``/slack/events`` (events, ``url_verification``,
        interactivity): bolt checks the signature and the timestamp first, then runs the
        same listeners as Socket Mode and answers only once they are done (200), so an
        event the router could not take gets an error and Slack sends it again."""
        if self.mode != "events" or self.app is None or self.callbacks is None:
            return 404, {"content-type": "application/json"}, b'{"error":"slack events off"}'
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return 400, {"content-type": "application/json"}, b'{"error":"not UTF-8"}'
        req = AsyncBoltRequest(body=text, headers={k.lower(): v for k, v in headers.items()})
        resp = await self.app.async_dispatch(req)
        out = {k: v[0] for k, v in resp.headers.items() if v}
        return (
            resp.status,
            out,
            resp.body.encode("utf-8") if isinstance(resp.body, str) else resp.body,
        )
