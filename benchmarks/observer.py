"""Watches a completion stream with a blocking XREAD and notes, in this process's clock, when each task id
appeared: the same observer for every queue, so "done" means the same thing for all of them."""

from __future__ import annotations

import threading
import time

import redis


class DoneObserver:
    def __init__(self, client: redis.Redis, stream: str, field: bytes) -> None:
        self.redis = client
        self.stream = stream
        self.field = field
        self.done: dict[int, float] = {}
        self._arrivals: list[int] = []  # ids in the order they were seen, for cheap incremental counting
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"observe {stream}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> DoneObserver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        last = "0-0"
        try:
            while not self._stop.is_set():
                reply = self.redis.xread({self.stream: last}, count=1000, block=200)
                now = time.perf_counter()
                if not reply:
                    continue
                entries = reply[0][1]
                last = entries[-1][0]
                with self._cond:
                    for _entry_id, fields in entries:
                        task_id = int(fields[self.field])
                        if task_id not in self.done:
                            self.done[task_id] = now
                            self._arrivals.append(task_id)
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced to the waiting harness instead of a silent hang
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, ids: range, timeout: float) -> int:
        """Block until every id in ``ids`` is done or ``timeout`` passes; returns how many are done."""
        deadline = time.monotonic() + timeout
        with self._cond:
            count = sum(1 for i in ids if i in self.done)
            seen = len(self._arrivals)
            while True:
                count += sum(1 for i in self._arrivals[seen:] if i in ids)
                seen = len(self._arrivals)
                left = deadline - time.monotonic()
                if count == len(ids) or left <= 0 or self.error is not None:
                    return count
                self._cond.wait(min(left, 0.1))

    def times(self, ids: range) -> dict[int, float]:
        with self._cond:
            return {i: self.done[i] for i in ids if i in self.done}
