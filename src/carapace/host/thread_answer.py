"""An event loop's future answered from a worker thread: the session writers, the ingest
journal and the outbox readers hand their results back this way."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def answer(loop: asyncio.AbstractEventLoop | None, fut: asyncio.Future[Any] | None,
           ok: bool, value: Any) -> None:  # fmt: skip
    """Resolve ``fut`` on ``loop`` (its result ``value`` when ``ok``, else that exception);
    from any thread. Nothing when there is no future, the loop is closed (nobody waits), or
    the caller gave up meanwhile (a timeout, a cancel)."""
    if loop is not None and fut is not None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(_resolve, fut, ok, value)


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the caller gave up meanwhile
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
