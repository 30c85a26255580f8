"""The runner's one helper thread while a turn runs: the heartbeat (``.heartbeat``: the
host's typing indicator and stuck rule read it) and the turn's claim once it is due
(runner/claims.py)."""

from __future__ import annotations

import math
import threading
import time

from carapace.log import get_logger
from carapace.runner.claims import DeferredClaims

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


logger = get_logger(__name__)

KEEPALIVE_S = 4.0


class Keepalive:
    """Touches ``.heartbeat`` every few seconds while a turn runs (typing indicator, stuck
    rule), and commits the turn's ``claims`` when they are due.

    One thread for the runner's life, started at the first turn and parked between turns
    (issue 19: not a thread started and joined per turn); ``with keepalive:`` marks a turn
    (the claims are taken before it), ``close()`` ends the thread. A turn's start wakes the
    thread only when it would not look in time by itself (parked, or waiting past this
    turn's claim or first touch), and its end never does: back-to-back turns a few
    milliseconds each cost no thread wake each (two before: a GIL handover and a context
    switch each, on the CPUs the host delivers the reply on). A touch already under way
    when a turn ends may finish after it (a touch too many is harmless). When no thread can
    be started (a task limit reached), each turn's start touches the heartbeat and commits
    the claims at once: nothing would when they are due."""

    def __init__(self, touch: Any, interval: float = KEEPALIVE_S,
                 claims: DeferredClaims | None = None) -> None:  # fmt: skip
        self.touch = touch
        self.interval = interval
        self.claims = claims
        self._cond = threading.Condition()
        self._turn = 0  # counts turns; the thread's clock restarts with each
        self._started = 0.0  # (monotonic) when the current turn began
        self._active = False
        # (monotonic) when the thread looks at the turn next: inf while parked, -inf while
        # it runs (it looks before it waits again)
        self._looks_at = -math.inf
        self._closed = False
        self._thread: threading.Thread | None = None
        self._threadless = False  # a thread could not be started

    def __enter__(self) -> Keepalive:
        with self._cond:
            self._turn += 1
            self._started = time.monotonic()
            self._active = True
            if self._thread is None and not self._closed and not self._threadless:
                thread = threading.Thread(target=self._run, name="keepalive", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # no thread to be had (a task limit reached)
                    self._threadless = True
                    logger.warning("no keepalive thread (%s): the heartbeat is touched and "
                                   "claims committed at each turn's start", exc)  # fmt: skip
                else:
                    self._thread = thread
            due = self.claims.due if self.claims is not None else None
            needed = self._started + self.interval
            if due is not None and due < needed:
                needed = due
            if self._looks_at > needed:
                self._cond.notify()
        if self._threadless:
            self.touch()
            if self.claims is not None:
                self.claims.commit()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active = False  # (the thread sees it when it looks next, and parks)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        claims = self.claims
        with self._cond:
            while not self._closed:
                if not self._active:
                    self._looks_at = math.inf
                    self._cond.wait()
                    self._looks_at = -math.inf
                    continue
                turn, touch_at = self._turn, self._started + self.interval
                while self._active and self._turn == turn and not self._closed:
                    claim_at = claims.due if claims is not None else None
                    now = time.monotonic()
                    left = min(touch_at, claim_at if claim_at is not None else touch_at) - now
                    if left > 0:
                        self._looks_at = now + left
                        self._cond.wait(left)
                        self._looks_at = -math.inf
                        continue
                    self._cond.release()  # (the work runs without the turn's lock)
                    try:
                        if claims is not None and claim_at is not None and claim_at <= now:
                            claims.commit()
                        if touch_at <= now:
                            self.touch()
                    finally:
                        self._cond.acquire()
                    if touch_at <= now:
                        touch_at = time.monotonic() + self.interval
