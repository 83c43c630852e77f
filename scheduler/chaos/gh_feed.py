"""The executes of a GoodsHunter run: the Go API's ``execute`` XADDs for task rows, and price drops.

One execute at a time per task: the next only once a crawl that started after the previous one has
ended (acknowledged: the task's ``lastok`` stamp, written with the XACK, is past the execute's entry),
as a user's "run now" or the Go scheduler's period come, never stacked. An execute that arrives while
a run of its task holds the run lock, even one whose crawl is written and only its ack is left, is
collapsed into that run by design (lock_runs.lua: 'duplicate'): no crawl of its own would follow it,
and it could not be told from a lost one. (Waiting only for ``last_run_at`` sent executes into exactly
that gap, and the checks counted them as lost.) The fake crawler's result window moves by one item per call,
so every crawl after the baseline finds a new item; before some executes a known item's price in the
dedup hash ``dedup:<task>`` is raised by 500 (as if it had cost more before), so that the next crawl
finds it cheaper: a price drop. Each raise is recorded: a drop event without one is a duplicate.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import redis

from scheduler.chaos.cluster import STREAM
from scheduler.chaos.gh_db import GoodsHunterDb
from scheduler.chaos.producer import Recorder
from scheduler.taskqueue import keys

DROP_SHARE = 0.3  # executes preceded by a price raise
POLL_S = 0.05


@dataclass(frozen=True)
class Raise:
    task_id: int
    source_id: str
    price: int  # the price raised to (the drop event's old_price)
    at: float


class RowFeeder(threading.Thread):
    """Executes of ``tasks`` at ``rate`` a second for ``seconds``, one in flight per task."""

    def __init__(
        self,
        recorder: Recorder,
        db: GoodsHunterDb,
        client: redis.Redis,
        tasks: list[int],
        seconds: float,
        rate: float,
        rng: random.Random,
    ) -> None:
        super().__init__(name="chaos-row-feeder", daemon=True)
        self.recorder, self.db, self.client = recorder, db, client
        self.tasks, self.seconds, self.rate, self.rng = tasks, seconds, rate, rng
        self.raises: list[Raise] = []
        self.stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        waiting: dict[int, int] = {}  # task -> its execute's entry time (ms, Redis' clock), not yet ended
        baselined: set[int] = set()
        started = time.monotonic()
        sent, polled = 0, 0.0
        while time.monotonic() - started < self.seconds and not self.stop_event.is_set():
            if waiting and time.monotonic() - polled >= POLL_S:
                polled = time.monotonic()
                for task in self._ended(waiting):
                    del waiting[task]
                    baselined.add(task)
            due = started + sent / self.rate - time.monotonic()
            ready = [t for t in self.tasks if t not in waiting]
            if due > 0 or not ready:
                self.stop_event.wait(max(0.0, min(due, POLL_S)) if ready else POLL_S)
                continue
            task = self.rng.choice(ready)
            if task in baselined and self.rng.random() < DROP_SHARE:
                self._raise_price(task)
            submit = self.recorder.submit(task)
            sent += 1
            if submit.entry_id:  # an uncertain XADD may not exist: nothing to wait for
                waiting[task] = int(submit.entry_id.split("-", 1)[0])

    def _ended(self, waiting: dict[int, int]) -> list[int]:
        """The waiting tasks whose last successful crawl started after their execute was sent."""
        tasks = list(waiting)
        try:
            stamps = self.client.hmget(keys.last_success_hash(STREAM), [str(t) for t in tasks])
        except redis.RedisError:  # Redis is the faults' to take away, not the feeder's to die of
            self.errors += 1
            return []
        return [
            t
            for t, stamp in zip(tasks, stamps, strict=True)
            if stamp is not None and int(stamp) >= waiting[t]
        ]

    def _raise_price(self, task_id: int) -> None:
        try:
            candidates = self.db.best_ranked(task_id, 3)
            if not candidates:
                return
            source = self.rng.choice(candidates)
            dedup = keys.dedup_hash(task_id)
            old = self.client.hget(dedup, source)
            if old is None:
                return
            price = int(old) + 500
            at = time.time()
            self.client.hset(dedup, source, str(price))
            self.raises.append(Raise(task_id, source, price, at))
        except Exception:  # a raise that did not happen is simply not recorded
            self.errors += 1
