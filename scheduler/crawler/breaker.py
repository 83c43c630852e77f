"""A small thread-safe circuit breaker for the crawler.

closed --(``failure_threshold`` consecutive transient failures, or ``force_open()``)--> open
open --(``open_seconds`` later)--> half_open: ``allow()`` lets exactly one probe through
half_open --(success)--> closed, --(failure)--> open again for another ``open_seconds``

Callers record only *transient* failures (crawler down, overloaded, timing out). A permanent error such
as INVALID_ARGUMENT proves the crawler is up and answering, so it should be recorded as a success.
While open, the daemon stops reading tasks, so retry budgets are not burned on a crawler that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

logger = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        open_seconds: float = 10.0,
        *,
        on_change: Callable[[State, State], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if open_seconds < 0:
            raise ValueError("open_seconds must not be negative")
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    @property
    def state(self) -> State:
        with self._lock:
            changes = self._refresh()
            state = self._state
        self._notify(changes)
        return state

    def allow(self) -> bool:
        """May a call go out now? In half_open, True for exactly one caller (the probe)."""
        with self._lock:
            changes = self._refresh()
            if self._state == "closed":
                allowed = True
            elif self._state == "open":
                allowed = False
            else:
                now = self._clock()
                probe = self._probe_started_at
                # A probe whose outcome is never recorded (its caller died) must not wedge the breaker
                # half-open forever: after another open_seconds a new probe may go.
                allowed = probe is None or now - probe >= self.open_seconds
                if allowed:
                    self._probe_started_at = now
        self._notify(changes)
        return allowed

    def record_success(self) -> None:
        with self._lock:
            changes = self._refresh()
            self._failures = 0
            # A late success of a call sent before the breaker opened proves little; only closed and
            # half_open react to it (half_open: the probe, or any call, got through).
            if self._state == "half_open":
                changes.append(self._move("closed"))
        self._notify(changes)

    def record_failure(self) -> None:
        """Record one transient failure."""
        with self._lock:
            changes = self._refresh()
            self._failures += 1
            if self._state == "half_open" or (
                self._state == "closed" and self._failures >= self.failure_threshold
            ):
                changes.append(self._open())
        self._notify(changes)

    def force_open(self) -> None:
        """Open now (or restart the open period), e.g. when the crawler's health check says NOT_SERVING."""
        with self._lock:
            changes = [self._open()]
        self._notify(changes)

    # --- internals: called with the lock held; transitions are reported after it is released so an
    # on_change callback may read the breaker without deadlocking.

    def _refresh(self) -> list[tuple[State, State]]:
        if self._state == "open" and self._clock() - self._opened_at >= self.open_seconds:
            return [self._move("half_open")]
        return []

    def _open(self) -> tuple[State, State]:
        self._opened_at = self._clock()
        return self._move("open")

    def _move(self, new: State) -> tuple[State, State]:
        old, self._state = self._state, new
        self._probe_started_at = None
        if new == "closed":
            self._failures = 0
        return old, new

    def _notify(self, changes: list[tuple[State, State]]) -> None:
        for old, new in changes:
            if old == new:
                continue
            logger.info("crawler circuit breaker %s -> %s", old, new)
            if self._on_change is not None:
                self._on_change(old, new)
