"""The producer side of a run: registers specs and records every submit, acknowledged or not.

A submit is *acknowledged* when XADD returned an entry id. The producer's client never retries a
command (a retried XADD whose first reply was lost would add a second entry); a submit that raised is
*uncertain* (it may or may not be in the stream) and is left out of the lost and duplicate counts.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scheduler.taskqueue import Producer
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

Action = Literal["execute", "stop"]
SHARED_BASE = 9_000_000  # ids of the shared tasks (executes, stops and re-enables mixed)


@dataclass(frozen=True)
class Submit:
    task_id: int
    action: Action
    ts: float  # wall time just before the XADD was sent (the message's timestamp is after it)
    entry_id: str | None  # None: uncertain (the call raised)
    acked_at: float = 0.0


@dataclass
class Workload:
    """Which task ids exist and with which keyword (scripting the fake crawler)."""

    keywords: dict[int, str] = field(default_factory=dict)
    shared: list[int] = field(default_factory=list)

    def kind(self, task_id: int) -> str:
        keyword = self.keywords.get(task_id, "")
        if "INVALID_ARGUMENT" in keyword:
            return "permanent"
        if "hang" in keyword:
            return "hang"
        if "UNAVAILABLE" in keyword:
            return "transient"
        return "plain"


def make_workload(rng: random.Random, unique: int, shared: int, crawler_faults: bool) -> Workload:
    work = Workload()
    for task_id in range(1, unique + 1):
        keyword = f"item {task_id}"
        if crawler_faults:
            roll = rng.random()
            if roll < 0.08:
                keyword += ";fail=UNAVAILABLE*2"
            elif roll < 0.12:
                keyword += ";fail=INVALID_ARGUMENT"
            elif roll < 0.14:
                keyword += ";hang"
        work.keywords[task_id] = keyword
    for index in range(shared):
        task_id = SHARED_BASE + index
        work.keywords[task_id] = f"shared {task_id}"
        work.shared.append(task_id)
    return work


def producer_client(port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=5,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
        client_name="chaos-producer",
    )


class Recorder:
    def __init__(self, port: int) -> None:
        self.port = port
        self.client = producer_client(port)
        self.producer = Producer(self.client)
        self.submits: list[Submit] = []
        self._lock = threading.Lock()

    def register(self, work: Workload, chunk: int = 2000) -> None:
        specs = [TaskSpec(task_id, keyword) for task_id, keyword in work.keywords.items()]
        registry = RedisTaskRegistry(self.client)
        for start in range(0, len(specs), chunk):
            registry.put_many(specs[start : start + chunk])

    def plain_specs(self, work: Workload) -> None:
        """Re-register every task with a plain keyword (the final "is anything stuck" round)."""
        specs = [TaskSpec(task_id, f"again {task_id}") for task_id in work.keywords]
        registry = RedisTaskRegistry(self.client)
        for start in range(0, len(specs), 2000):
            registry.put_many(specs[start : start + 2000])

    def submit(self, task_id: int, action: Action = "execute") -> Submit:
        ts = time.time()
        try:
            if action == "execute":
                entry_id: str | None = self.producer.submit_task(task_id, "user_create")
            else:
                entry_id = self.producer.stop_task(task_id)
        except Exception:
            entry_id = None
        record = Submit(task_id, action, ts, entry_id, time.time())
        with self._lock:
            self.submits.append(record)
        return record

    def submit_bulk(self, task_ids: list[int], chunk: int = 1000) -> None:
        """Pipelined executes (the backlog); a chunk that raised is uncertain as a whole."""
        for start in range(0, len(task_ids), chunk):
            part = task_ids[start : start + chunk]
            ts = time.time()
            try:
                ids: list[str | None] = list(self.producer.submit_many(part, "user_create"))
            except Exception:
                ids = [None] * len(part)
            done = time.time()
            with self._lock:
                self.submits += [Submit(t, "execute", ts, e, done) for t, e in zip(part, ids, strict=True)]

    def close(self) -> None:
        self.client.close()


class Feeder(threading.Thread):
    """Submits the unique tasks at a steady rate and mixes executes and stops of the shared ones."""

    def __init__(
        self, recorder: Recorder, work: Workload, seconds: float, rng: random.Random, skip: int = 0
    ) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.recorder = recorder
        self.work = work
        self.seconds = seconds
        self.rng = rng
        self.skip = skip  # ids already submitted (backlog)
        self.stop_event = threading.Event()

    def run(self) -> None:
        unique = [t for t in self.work.keywords if t < SHARED_BASE][self.skip :]
        interval = self.seconds / max(1, len(unique))
        started = time.monotonic()
        next_shared = started + self.rng.uniform(0.2, 1.0)
        for index, task_id in enumerate(unique):
            if self.stop_event.is_set():
                return
            self.recorder.submit(task_id)
            now = time.monotonic()
            if self.work.shared and now >= next_shared:
                shared = self.rng.choice(self.work.shared)
                self.recorder.submit(shared, "stop" if self.rng.random() < 0.3 else "execute")
                next_shared = now + self.rng.uniform(0.2, 1.5)
            delay = started + (index + 1) * interval - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
        # a last execute of each shared task, so each ends with work to check
        for shared in self.work.shared:
            self.recorder.submit(shared)
