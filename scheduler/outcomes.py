"""The OutcomeWriter: records successful crawls in batches, one script call per batch.

Workers hand over a ``Done`` and go back to crawling; one thread takes everything waiting and records it
with ``complete_batch.lua``: per entry, only while this consumer still holds it, results + status keys +
run marker + last success, then XACK. At low load a batch is one outcome written at once; under load the
batch grows and the per-task cost of Redis round-trips shrinks. The entry's worker slot (and its lease)
is kept until its outcome is written or given up, so backpressure and lease renewal still cover it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import redis

from scheduler.config import Settings
from scheduler.errors import QueueConnectionError
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.taskqueue import Consumer, keys
from scheduler.taskqueue._redis import connection_errors
from scheduler.worker import Done, Persist, Running

log = logging.getLogger(__name__)

MAX_BATCH = 200
_CLOSE = object()


class OutcomeWriter:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        lifecycle: Lifecycle,
        metrics: Metrics,
        *,
        finished: Callable[[Running], None],
        give_up: threading.Event,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.finished = finished
        self.results = keys.results_stream(settings.task_queue_stream)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="outcomes", daemon=True)
        self._persist = Persist(settings.lease_timeout, give_up)

    def start(self) -> OutcomeWriter:
        self._thread.start()
        return self

    def submit(self, done: Done) -> None:
        self._queue.put(done)

    def close(self, timeout: float) -> None:
        """Write what is waiting, then stop."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout)

    def _loop(self) -> None:
        closing = False
        while not closing:
            batch: list[Done] = []
            item = self._queue.get()
            while True:
                if item is _CLOSE:
                    closing = True
                else:
                    batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._flush(batch)

    def _flush(self, batch: list[Done]) -> None:
        try:
            new_counts = self._persist(lambda: self._write(batch))
        except (QueueConnectionError, redis.ResponseError) as exc:
            self.metrics.redis_errors.labels("outcome").inc()
            log.error("%d outcomes not recorded, entries left pending: %s", len(batch), exc)
            new_counts = None
        except Exception:
            log.exception("%d outcomes not recorded, entries left pending", len(batch))
            new_counts = None
        for index, done in enumerate(batch):
            try:
                if new_counts is not None:
                    self._report(done, int(new_counts[index]))
            finally:
                self.finished(done.running)

    def _write(self, batch: list[Done]) -> Any:
        s = self.settings
        stream = s.task_queue_stream
        keys_: list[str] = [stream, self.results, self.lifecycle.last_success]
        args: list[str | int] = [s.task_queue_group, self.consumer.name, int(s.seen_ttl), s.results_maxlen,
                              keys.STATUS_TTL_SECONDS]  # fmt: skip
        for done in batch:
            msg = done.running.msg
            task_id = msg.message.task_id
            keys_ += [
                keys.seen_items_key(stream, task_id),
                keys.crawl_status_key(task_id),
                keys.crawl_message_key(task_id),
                self.lifecycle.marker(task_id),
            ]
            args += [msg.id, task_id, done.status, done.total_found, done.crawled_at, done.items_json,
                     done.running.crawl_started_ms, len(done.source_ids), *done.source_ids]  # fmt: skip
        with connection_errors("record outcomes"):
            return self.consumer.scripts.complete_batch(keys=keys_, args=args)

    def _report(self, done: Done, new_items: int) -> None:
        msg = done.running.msg
        self.metrics.processing_duration.observe(done.duration_s)
        if new_items < 0:
            log.warning(
                "entry no longer held by this consumer: success not recorded twice",
                extra={"task_id": msg.message.task_id, "entry_id": msg.id, "consumer": self.consumer.name},
            )
            self.metrics.tasks_processed.labels("not_held").inc()
            return
        self.metrics.tasks_processed.labels(done.status).inc()
        log.info(
            "task %s",
            done.status,
            extra={
                "task_id": msg.message.task_id,
                "entry_id": msg.id,
                "attempt": msg.message.retry + 1,
                "consumer": self.consumer.name,
                "duration_ms": round(done.duration_s * 1000, 1),
                "outcome": done.status,
                "code": "OK",
                "calls": done.calls,
                "new_items": new_items,
            },
        )
