"""The worker threads: a fixed pool that takes ``(function, args)`` from one queue.

``concurrent.futures.ThreadPoolExecutor`` does the same with a Future per call (a lock, a condition, a
work item, a result set on it), which nobody here reads: the read loop hands a crawl over and forgets it,
and the worker hands its outcome to the writer itself. Without them a hand-over costs 5.6 instead of
11.9 µs of CPU (submit and run, 16 threads). The pool is as large as the worker slots (``Slots``), so the
queue holds at most the read-ahead (``intake``), whose entries the read loop takes back if no worker
comes to them in time.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, size: int, name: str = "worker") -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._closed = False
        # daemon threads: a pool nobody shut down (a start that failed later, a test) never holds the
        # interpreter open; the daemon's stop waits for the crawls in progress (or cancels them) itself
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on a free worker. RuntimeError once the pool is shut down (nothing is run)."""
        with self._lock:  # never queued behind the stop marks, where no worker would take it
            if self._closed:
                raise RuntimeError("the worker pool is shut down")
            self._queue.put((fn, args))

    def shutdown(self) -> int:
        """Take no more work and drop what no worker has started (its entries stay pending in Redis);
        workers end once their call returns. Does not wait. Returns how many calls were dropped."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            dropped = 0
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                dropped += 1
            for _ in self._threads:
                self._queue.put(None)  # the stop mark: a worker that takes it ends
        return dropped

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:
                # the callers handle their own errors; a worker that ended here (SystemExit from a
                # library, say) would shrink the pool for good while the slots still count it: its
                # share of the entries would wait, held, for ever
                log.exception("worker call failed")
            del item, fn, args  # nothing of a finished call stays referenced while the worker waits
