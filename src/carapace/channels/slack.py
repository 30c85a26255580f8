"""The Slack channel: a slack-bolt app in Socket Mode (no public URL needed), or on Slack's
Events API over the host's web server.

Set-up: ``carapace channels add slack`` stores ``SLACK_BOT_TOKEN`` (``xoxb-…``) and
``SLACK_APP_TOKEN`` (``xapp-…``, an app-level token with ``connections:write``) in
``<home>/secrets.env`` after ``verify`` has checked both against Slack (the host's
environment overrides the file). The app needs the bot scopes ``chat:write``,
``reactions:write``, ``files:read``, ``files:write``, ``im:write``, ``users:read`` and the
history scopes of the conversations it reads, with the events ``message.*`` and
``app_mention`` and interactivity on.

Events API instead (``carapace channels add slack --mode events``: ``SLACK_BOT_TOKEN`` and
``SLACK_SIGNING_SECRET``, no app token; ``[web] enabled`` with a public URL in front): point
the app's *Event Subscriptions* and *Interactivity* request URLs at
``https://<your host>/slack/events``. Every request's signature (``X-Slack-Signature``,
HMAC-SHA256 of ``v0:<timestamp>:<body>`` with the signing secret) and timestamp (five
minutes) are checked before anything is read; ``url_verification`` is answered; an event is
answered 200 only after the router committed its rows, so Slack retries one the host could
not take (a retry of one already taken is recognised by its message id). ``[channels.slack]
mode = "socket"|"events"`` forces a mode when the secrets file holds both.

Inbound (``slack_inbound``): events arrive over Socket Mode (or the Events API); bolt runs with
``process_before_response`` so an envelope is acked only after the router has committed its
rows (or decided to drop it). An envelope whose handling failed is not acked, and Slack
delivers it again on the next connection; the router's message ids make that idempotent.

Outbound: Markdown → mrkdwn with everything else escaped (``slack_format``), split at
4,000 characters; ``edit`` → ``chat.update``; ``react`` → ``reactions.add``; files through
``files_upload_v2`` (``files.getUploadURLExternal``, upload, ``files.completeUploadExternal``);
cards and questions as Block Kit buttons whose clicks go to the approvals entry point
(``ChannelCallbacks.on_action``) with the clicker's Slack user id. HTTP 429 is retried after
its ``Retry-After`` (slack_sdk's handler, three times), then reported as a retryable failure
(the pieces of a long message already posted are not posted again when it is retried);
Slack's refusals (an archived or unknown channel, a message too long) are permanent and
the agent is told.

The adapter never takes the host down: tokens Slack rejects make ``start`` raise (the host
logs it once, records the channel as failed for ``carapace channels list``/``doctor`` and
serves the other channels); Slack unreachable at start is retried in the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from carapace.errors import CarapaceError

if TYPE_CHECKING:
    from carapace.channels.slack_adapter import SlackChannel

CHANNEL = "slack"
SECRET_KEYS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")
#: Socket Mode (the default: no public URL) or the Events API over the host's web server.
MODES = {"socket": SECRET_KEYS, "events": ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")}
DEFAULT_MAX_FILE_MB = 20
EVENTS_PATH = "/slack/events"


class SlackError(CarapaceError):
    code = "slack"


def from_home(home: Any, secrets: Mapping[str, str], settings: Any) -> SlackChannel | None:
    """The adapter when both tokens are configured (None: Slack is not set up). Settings:
    ``[channels.slack] base_url`` (or ``CARAPACE_SLACK_BASE_URL``) and ``max_file_mb``."""
    from carapace.channels import registry

    bot, app = secrets.get("SLACK_BOT_TOKEN"), secrets.get("SLACK_APP_TOKEN")
    signing = secrets.get("SLACK_SIGNING_SECRET")
    conf = registry.channel_settings(settings, CHANNEL)
    mode = conf.get("mode") or ("socket" if app or not signing else "events")
    if mode not in MODES:
        raise SlackError('carapace.toml: [channels.slack] mode must be "socket" or "events"')
    if not bot or not (app if mode == "socket" else signing):
        return None
    max_mb = conf.get("max_file_mb", DEFAULT_MAX_FILE_MB)
    if isinstance(max_mb, bool) or not isinstance(max_mb, int | float) or max_mb <= 0:
        raise SlackError("carapace.toml: [channels.slack] max_file_mb must be a positive number")
    from carapace.channels.slack_adapter import SlackChannel

    return SlackChannel(bot, app if mode == "socket" else None,
                        signing_secret=signing if mode == "events" else None,
                        base_url=registry.base_url(settings, CHANNEL),
                        max_file_bytes=int(max_mb * 1024 * 1024))  # fmt: skip


async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    """Check the tokens against Slack: ``auth.test`` for the bot token,
    ``apps.connections.open`` for the app token (a method called with an app-level
    token); returns ``@<bot name> (<team>)``. Raises ``SlackError`` with one line. In events
    mode (a signing secret, no app token) the signing secret cannot be checked from here:
    its shape is, and Slack's first signed request to ``/slack/events`` proves it."""
    from carapace.channels.slack_adapter import verify_tokens

    return await verify_tokens(secrets, base_url=base_url)
