"""The webhook channel (``webhook``): machines (CI, home automation, forms) post to
``POST /hooks/<name>``.

Signature: ``X-Carapace-Timestamp: <unix seconds>`` and
``X-Carapace-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``; the
secret is ``WEBHOOK_<NAME>_SECRET`` in ``<home>/secrets.env`` (never in a DB). A request is
refused when the signature is wrong, the timestamp is outside the hook's replay window, the
same signature was seen before, or the body is over the hook's size limit. The body lands
as NanoClaw's ``webhook`` kind: ``{"source": <hook>, "event": <X-Carapace-Event or
"post">, "payload": <JSON body, or the text>}``; the answer is 202 only after the rows
committed.

Replies go to the hook's ``callback_url`` (signed the same way, one POST per reply; a failure
is a ``DeliveryError``, so the host's delivery retries with backoff and finally tells the
agent), or, with no callback, are kept in ``data/web.db`` for the caller to fetch with a
signed ``GET /hooks/<name>/replies?after=<id>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from carapace.channels.base import ChannelCallbacks, OutboundMessage
from carapace.config import Home, Settings
from carapace.errors import DeliveryError
from carapace.jsonutil import dumps
from carapace.timefmt import Clock, SystemClock, new_id
from carapace.web.config import HookSettings, WebSettings, web_settings
from carapace.web.store import WebStore

logger = logging.getLogger(__name__)

CHANNEL = "webhook"
SECRET_KEYS: tuple[str, ...] = ()  # one per hook: WEBHOOK_<NAME>_SECRET
CALLBACK_TIMEOUT_S = 10.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class SignatureError(Exception):
    """Why a webhook request is refused (HTTP status, one-line reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def check_signature(
    secret: str | None, timestamp: str | None, signature: str | None, body: bytes,
    now: datetime, window_s: float,
) -> None:  # fmt: skip
    if not secret:
        raise SignatureError(404, "no such hook")
    if not timestamp or not signature:
        raise SignatureError(401, "missing X-Carapace-Timestamp or X-Carapace-Signature")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError(401, "X-Carapace-Timestamp is not unix seconds")
    if abs(now.timestamp() - ts) > window_s:
        raise SignatureError(401, "timestamp outside the replay window")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        raise SignatureError(401, "bad signature")


class WebhookChannel:
    channel_type = CHANNEL
    supports_threads = False

    def __init__(
        self, home: Home, web: WebSettings, secrets: Mapping[str, str], *,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self.home = home
        self.web = web
        self.secrets = dict(secrets)
        self.clock: Clock = clock or SystemClock()
        self.store: WebStore | None = None
        self.callbacks: ChannelCallbacks | None = None

    def hook(self, name: str) -> HookSettings | None:
        return self.web.hooks.get(name)

    def secret(self, name: str) -> str | None:
        hook = self.hook(name)
        return self.secrets.get(hook.secret_key) if hook is not None else None

    async def start(self, callbacks: ChannelCallbacks) -> None:
        self.callbacks = callbacks
        if self.store is None:
            self.store = WebStore.open(self.home)

    async def stop(self) -> None:
        self.callbacks = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _store(self) -> WebStore:
        if self.store is None:
            raise DeliveryError("the webhook channel is not started")
        return self.store

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        hook = self.hook(platform_id)
        if hook is None:
            raise DeliveryError(f"no webhook {platform_id!r} is configured", permanent=True)
        body: dict[str, Any] = {
            "hook": hook.name, "kind": message.kind, "content": message.content,
            "id": message.message_out_id, "in_reply_to": message.in_reply_to,
            "files": [f.name for f in message.files],
        }  # fmt: skip
        if hook.callback_url is None:
            stored = self._store().add_message(
                f"hook:{hook.name}", "out", message.kind, message.content, self.clock.now(),
                message_out_id=message.message_out_id, in_reply_to=message.in_reply_to,
                files=tuple((f.name, f.data) for f in message.files),
            )  # fmt: skip
            return f"hook-{stored.id}"
        secret = self.secret(hook.name) or ""
        data = dumps(body).encode()
        ts = str(int(self.clock.now().timestamp()))
        headers = {"content-type": "application/json", "x-carapace-timestamp": ts,
                   "x-carapace-signature": sign(secret, ts, data)}  # fmt: skip
        status = await asyncio.to_thread(_post, hook.callback_url, data, headers)
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook {hook.name}: callback answered HTTP {status}",
                                permanent=400 <= status < 500 and status not in (408, 429))  # fmt: skip
        return message.message_out_id or new_id("hook", self.clock.now())

    def replies(self, name: str, after: int, limit: int = 100) -> list[dict[str, Any]]:
        return [
            m.to_json() for m in self._store().history(f"hook:{name}", after=after, limit=limit)
        ]


def _post(url: str, data: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=CALLBACK_TIMEOUT_S) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DeliveryError(f"webhook callback unreachable: {getattr(exc, 'reason', exc)}")


def from_home(home: Home, secrets: Mapping[str, str], settings: Settings) -> WebhookChannel | None:
    """The webhook channel when the web server is enabled and has hooks (None otherwise).
    Each hook's secret (``WEBHOOK_<NAME>_SECRET``) is read here from ``<home>/secrets.env``,
    the host's environment overriding, since the names depend on the configured hooks."""
    from carapace.channels.registry import load_secrets

    web = web_settings(settings, home)
    if not web.enabled or not web.hooks:
        return None
    keys = tuple(h.secret_key for h in web.hooks.values())
    return WebhookChannel(home, web, {**secrets, **load_secrets(home, keys)})


async def verify(secrets: Mapping[str, str], *, base_url: str | None = None) -> str:
    return "webhooks (each hook's secret is WEBHOOK_<NAME>_SECRET in secrets.env)"
