"""Worker slots: the read loop's backpressure."""

from __future__ import annotations

import threading
import time


class Slots:
    """Counts busy workers; the read loop waits here so it never holds more messages than free workers.

    A slot stays taken until the entry is ended (a success: until the OutcomeWriter recorded it), so the
    count is also the number of entries whose leases this daemon renews."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._busy = 0
        self._cond = threading.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    def wait_free(self, timeout: float) -> int:
        with self._cond:
            if self._busy >= self.size:
                self._cond.wait(timeout)
            return self.size - self._busy

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
