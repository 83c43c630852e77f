"""Worker slots: the read loop's backpressure."""

from __future__ import annotations

import threading
import time


class Slots:
    """Counts the entries handed to the workers and not yet done; the read loop waits here so it never
    holds more than the workers can start (``size``) plus, while crawls are quick, a few read ahead
    (``limit``: see ``intake``). A slot is given back when the worker's call returns (its outcome may
    still wait for the writer: ``Leases`` holds it until then), or when an entry is ended without one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._busy = 0
        self._cond = threading.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    def wait_free(self, timeout: float, limit: int | None = None) -> int:
        """Slots free below ``limit`` (default ``size``), waiting up to ``timeout`` while there are none."""
        limit = self.size if limit is None else limit
        with self._cond:
            if self._busy >= limit:
                self._cond.wait(timeout)
            return limit - self._busy

    def take(self, n: int = 1) -> None:
        with self._cond:
            self._busy += n

    def give(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
