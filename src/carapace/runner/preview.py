"""The in-progress text of a reply, published for the host to show as it is written.

While a streaming provider writes a turn's text, the runner keeps ``outbox/.preview.json``
in the session folder up to date (write to a temporary name, then rename: a reader sees a
whole file or the previous one). It is not a message: nothing durable is written, no
``messages_out`` row, and losing it loses nothing; the reply itself is still the one row
written when the turn ends. The host (``host/preview.py``) shows it on channels that can
edit a message in place and turns the shown message into the final reply.

The file (compact JSON)::

    {"v": 1, "reply_id": "msg-t…-reply", "channel_type": "telegram", "platform_id": "…",
     "thread_id": null, "text": "what the model wrote so far", "done": false, "reply": false}

* ``reply_id`` is the id the turn's plain reply row will have (``Batch.reply_id``), the
  same on every try of the batch; ``text`` is the current round's text (continuations of
  a cut reply included) up to the first ``<``, so the formatter's ``<internal>`` and
  ``<message to="…">`` markup never shows, not even in part.
* ``done`` is written once the turn's rows are committed; ``reply`` says whether a plain
  reply row with ``reply_id`` was among them (the host then edits the shown message into
  it), else ``text`` is the last text shown and the host leaves it as that.

Writes are throttled to one per ``MIN_INTERVAL_S``; a text held back by the throttle is
written by a timer, so the last piece before a pause is never lost.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from carapace.jsonutil import dumps
from carapace.log import get_logger
from carapace.runner.inbound import Routing

logger = get_logger(__name__)

PREVIEW_NAME = ".preview.json"
MIN_INTERVAL_S = 0.25
MAX_TEXT_CHARS = 16_000  # the host shows far less; a bound on the file, not a promise
STREAM_ENV = "CARAPACE_STREAM_CHANNELS"


def stream_channels(environ: dict[str, str] | os._Environ[str]) -> frozenset[str]:
    """The channel types the host shows previews on (``CARAPACE_STREAM_CHANNELS``)."""
    raw = environ.get(STREAM_ENV) or ""
    return frozenset(p.strip() for p in raw.split(",") if p.strip())


def visible(text: str) -> str:
    """What may be shown of a reply in progress: the text before the first ``<``."""
    cut = text.find("<")
    shown = text if cut < 0 else text[:cut]
    return shown[:MAX_TEXT_CHARS].rstrip()


class PreviewWriter:
    """Publishes one turn's in-progress text to ``<outbox>/.preview.json``."""

    def __init__(
        self,
        outbox: Path,
        reply_id: str,
        routing: Routing,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = outbox / PREVIEW_NAME
        self.reply_id = reply_id
        self.routing = routing
        self.min_interval_s = min_interval_s
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._written = ""  # the text in the file
        self._pending: str | None = None
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self._shown = ""  # the last non-empty text given (what the host may show at the end)
        self._closed = False
        self._broken = False

    def update(self, text: str) -> None:
        """The round's text so far (called from the provider's stream)."""
        shown = visible(text)
        with self._lock:
            if self._closed or self._broken:
                return
            if shown:
                self._shown = shown
            if shown == self._written and self._pending is None:
                return
            wait = self._last + self.min_interval_s - self.monotonic()
            if wait > 0:
                self._pending = shown
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._write_locked(shown, done=False, reply=False)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending is not None and not self._closed:
                self._write_locked(self._pending, done=False, reply=False)

    def finish(self, *, reply: bool) -> None:
        """The turn's rows are committed: say so (``reply``: a plain reply row with
        ``reply_id`` is among them). Nothing is written when nothing was ever shown."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._closed = True
            if self._broken or not (self._shown or self._written):
                self._remove_locked()
                return
            self._write_locked(self._shown, done=True, reply=reply)

    def abandon(self) -> None:
        """The turn was given up (shutdown): stop writing and leave the file for the next
        try of the batch, which continues it under the same ``reply_id``."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._closed = True

    def _write_locked(self, text: str, *, done: bool, reply: bool) -> None:
        self._pending = None
        self._last = self.monotonic()
        r = self.routing
        data = dumps({"v": 1, "reply_id": self.reply_id, "channel_type": r.channel_type,
                      "platform_id": r.platform_id, "thread_id": r.thread_id, "text": text,
                      "done": done, "reply": reply})  # fmt: skip
        tmp = self.path.with_name(PREVIEW_NAME + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)  # fmt: skip
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:  # a preview is best effort: the reply still comes as a row
            logger.warning("reply preview not written (%s): no more previews this turn", exc)
            self._broken = True
            return
        self._written = text

    def _remove_locked(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
