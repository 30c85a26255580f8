"""The runner's heartbeat while a turn runs (``.heartbeat``: the host's typing indicator and
stuck rule read it)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

KEEPALIVE_S = 4.0


class Keepalive:
    """Touches ``.heartbeat`` every few seconds while a turn runs (typing indicator, stuck rule).

    One thread for the runner's life, started at the first turn and parked between turns
    (issue 19: not a thread started and joined per turn); ``with keepalive:`` marks a turn,
    ``close()`` ends the thread. A touch already under way when a turn ends may finish after
    it (a touch too many is harmless)."""

    def __init__(self, touch: Any, interval: float = KEEPALIVE_S) -> None:
        self.touch = touch
        self.interval = interval
        self._cond = threading.Condition()
        self._turn = 0  # counts turns; the thread's clock restarts with each
        self._active = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._threadless = False  # a thread could not be started

    def __enter__(self) -> Keepalive:
        with self._cond:
            self._turn += 1
            self._active = True
            if self._thread is None and not self._closed and not self._threadless:
                thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # no thread to be had (a task limit reached)
                    self._threadless = True
                    logger.warning("no heartbeat thread (%s): touched at each turn's start "
                                   "only", exc)  # fmt: skip
                else:
                    self._thread = thread
            self._cond.notify()
        if self._threadless:
            self.touch()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active = False
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._active:
                    self._cond.wait()
                    continue
                turn, due = self._turn, time.monotonic() + self.interval
                while self._active and self._turn == turn and not self._closed:
                    left = due - time.monotonic()
                    if left > 0:
                        self._cond.wait(left)
                        continue
                    self._cond.release()
                    try:
                        self.touch()
                    finally:
                        self._cond.acquire()
                    due = time.monotonic() + self.interval
