"""The fuzz run's producer: seeded batches of poison and valid executes XADDed to the stream.

Each batch registers the tasks of its valid executes first, then writes its entries in one pipeline, in a
shuffled order, and ``Sent`` records every entry id as good (with its task) or bad (with its payload).
While feeding, the daemon's resident memory is sampled. The Redis-side figures the checks need (dead
letters by original entry id, pending entries, whether the group has read the whole stream) are read
here too.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import redis

from scheduler.chaos.fuzz_entries import Fields, bad_entry, good_entry, is_poison
from scheduler.chaos.procinfo import rss_kib
from scheduler.taskqueue import TaskMessage, keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

GROUP: Final = keys.DEFAULT_GROUP
BATCH_INTERVAL_S: Final = 0.05
GOOD_SHARE: Final = 0.3
RSS_SAMPLE_S: Final = 2.0
RSS_WARMUP_S: Final = 5.0  # the first sample is taken after this (imports, pools and caches filled)


@dataclass
class Sent:
    good: dict[str, int] = field(default_factory=dict)  # entry id -> task id
    bad: dict[str, bytes] = field(default_factory=dict)  # entry id -> data (b"" when it had none)
    skipped_valid: int = 0  # mutations that still decoded, not sent


class Feeder:
    """Writes the batches, records what it sent, samples the daemon's RSS, reads the Redis-side figures."""

    def __init__(
        self, client: redis.Redis, stream: str, rng: random.Random, daemon: subprocess.Popen[bytes]
    ) -> None:
        self.client = client
        self.stream = stream
        self.rng = rng
        self.daemon = daemon
        self.registry = RedisTaskRegistry(client)
        self.sent = Sent()
        self.next_task = rng.randrange(10**12, 10**15)  # far from any real task id on a shared Redis
        self.rss: list[int] = []

    def batch(self) -> None:
        rng = self.rng
        n = rng.randint(1, 10)
        goods = [self.next_task + i for i in range(n) if rng.random() < GOOD_SHARE]
        self.next_task += n
        if goods:
            self.registry.put_many(TaskSpec(t, f"fuzz item {t}") for t in goods)
        base = TaskMessage.new(rng.randrange(1, 10**6), "execute", "user_create").encode().encode()
        entries: list[tuple[Fields, int | None]] = [(good_entry(rng, t), t) for t in goods]
        while len(entries) < n:
            fields = bad_entry(rng, base)
            if is_poison(fields):
                entries.append((fields, None))
            else:
                self.sent.skipped_valid += 1
        rng.shuffle(entries)
        pipe = self.client.pipeline(transaction=False)
        for fields, _ in entries:
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        for entry_id, (fields, task_id) in zip(pipe.execute(), entries, strict=True):
            if task_id is None:
                self.sent.bad[entry_id.decode()] = fields.get(b"data", b"")
            else:
                self.sent.good[entry_id.decode()] = task_id

    def feed(self, seconds: float) -> None:
        start = time.monotonic()
        next_sample = start + RSS_WARMUP_S
        while (now := time.monotonic()) - start < seconds and self.daemon.poll() is None:
            self.batch()
            if now >= next_sample:
                if (rss := rss_kib(self.daemon.pid)) is not None:
                    self.rss.append(rss)
                next_sample = now + RSS_SAMPLE_S
            time.sleep(BATCH_INTERVAL_S)

    def dead_letters(self) -> Counter[str]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(keys.dlq_stream(self.stream))  # type: ignore[assignment]
        return Counter(fields[b"original_id"].decode() for _, fields in entries)

    def pending(self) -> int:
        try:
            return int(self.client.xpending(self.stream, GROUP)["pending"])
        except redis.ResponseError:
            return 0

    def delivered_all(self) -> bool:
        last = self.client.xrevrange(self.stream, count=1)
        groups = [g for g in self.client.xinfo_groups(self.stream) if g["name"] in (GROUP, GROUP.encode())]
        if not last or not groups:
            return not last
        return bool(groups[0]["last-delivered-id"] == last[0][0])
