"""One task message on a worker thread: spec → FetchRequest → crawl → outcome.

The read loop has already classified the message (skips and duplicates never get here) and holds its
task's run marker. A success is handed to the OutcomeWriter, which records it with others in one script
call; a failure is ended here (requeue or dead letter, each a guarded script). Every path ends the entry
exactly once, or leaves it pending on purpose (shutdown, lease lost, Redis unreachable) so that this
consumer's restart or another consumer's reclaim takes it up.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import redis
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from scheduler._proto import crawler_pb2
from scheduler.breaker import CircuitBreaker
from scheduler.config import Settings
from scheduler.crawler import CancelToken, CrawlerClient, FetchOutcome
from scheduler.errors import CrawlCancelledError, CrawlerError, QueueConnectionError
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.registry import TaskSpec
from scheduler.taskqueue import Consumer, StreamMessage, keys
from scheduler.taskqueue._redis import connection_errors
from scheduler.taskqueue.message import format_timestamp

log = logging.getLogger(__name__)
T = TypeVar("T")

PLATFORMS = {
    "mercari": crawler_pb2.PLATFORM_MERCARI,
    "yahoo_auction": crawler_pb2.PLATFORM_YAHOO_AUCTION,
}
SORTS = {
    "created_time": crawler_pb2.SORT_BY_CREATED_TIME,
    "price": crawler_pb2.SORT_BY_PRICE,
    "score": crawler_pb2.SORT_BY_SCORE,
    "num_likes": crawler_pb2.SORT_BY_NUM_LIKES,
}
ORDERS = {"desc": crawler_pb2.SORT_ORDER_DESC, "asc": crawler_pb2.SORT_ORDER_ASC}
PLATFORM_NAMES = {value: name for name, value in PLATFORMS.items()}
HANDED = "handed"  # a success now belongs to the OutcomeWriter, which ends the entry


def build_request(spec: TaskSpec) -> crawler_pb2.FetchRequest:
    return crawler_pb2.FetchRequest(
        task_id=str(spec.task_id),
        platform=PLATFORMS[spec.platform],
        keyword=spec.keyword,
        min_price=spec.min_price,
        max_price=spec.max_price,
        exclude_keywords=list(spec.exclude_keywords),
        only_on_sale=spec.only_on_sale,
        limit=spec.limit,
        sort=SORTS[spec.sort],
        order=ORDERS[spec.order],
    )


def retry_delay(retry: int, base_s: float, max_s: float) -> float:
    """Back-off before the ``retry``-th requeue: base * 2^(retry-1), capped, with equal jitter."""
    ceiling: float = min(max_s, base_s * 2 ** max(0, retry - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def entry_time(entry_id: str) -> float:
    """When Redis added the entry (the id's milliseconds), in seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000


@dataclass
class Running:
    """A message a worker holds: its lease is renewed while it is here."""

    msg: StreamMessage
    probe: bool = False  # sent while the crawler's circuit was half-open
    token: CancelToken = field(default_factory=CancelToken)
    started: float = field(default_factory=time.monotonic)
    cancel_reason: str | None = None  # "stopped" (ack), "shutdown" or "lost" (leave it pending)
    crawl_started_ms: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """A successful crawl waiting to be recorded by the OutcomeWriter."""

    running: Running
    status: str  # "success" or "no_items"
    total_found: int
    items_json: str
    source_ids: list[str]
    crawled_at: str
    duration_s: float
    calls: int


class TaskRunner:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        crawler: CrawlerClient,
        breaker: CircuitBreaker,
        metrics: Metrics,
        lifecycle: Lifecycle,
        *,
        record: Callable[[Done], None],
        on_stop: Callable[[int, str], None],
        give_up: threading.Event,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.redis = consumer.redis
        self.crawler = crawler
        self.breaker = breaker
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.record = record
        self.on_stop = on_stop
        self._persist = Persist(settings.lease_timeout, give_up)

    def run(self, running: Running, spec: TaskSpec | None) -> str:
        """Handle one message; returns the outcome label, or HANDED for a success being recorded."""
        msg = running.msg
        task = msg.message
        wait = time.time() - entry_time(msg.id)  # a retry's wait starts at its re-add; no producer clock
        if 0 <= wait < 86400:
            self.metrics.queue_wait.observe(wait)
        if task.action == "stop":
            self.on_stop(task.task_id, f"stop message {msg.id} (source {task.source})")
            return self._end(msg, "stop")
        assert spec is not None  # the read loop passes only runnable executes
        if spec.status == "stopped" and not self.lifecycle.resume(task.task_id):
            return self._end(msg, "skipped")  # deleted meanwhile
        started = time.monotonic()
        running.crawl_started_ms = int(time.time() * 1000)
        try:
            outcome = self.crawler.fetch(build_request(spec), cancel=running.token)
        except CrawlCancelledError:
            return self._cancelled(running)
        except CrawlerError as exc:
            label = self._failed(running, exc)
            seconds = time.monotonic() - started
            self.metrics.processing_duration.observe(seconds)
            extra = self.extra(msg, duration_ms=round(seconds * 1000, 1), outcome=label, code=exc.code)
            log.log(
                logging.WARNING if label == "dead_lettered" else logging.INFO, "task %s", label, extra=extra
            )
            return label
        self.breaker.record_success()
        self.record(self._done(running, outcome, time.monotonic() - started))
        return HANDED

    def _done(self, running: Running, outcome: FetchOutcome, seconds: float) -> Done:
        items = [_item_dict(item) for item in outcome.response.items]
        return Done(
            running=running,
            status="no_items" if outcome.no_items else "success",
            total_found=outcome.response.total_found,
            items_json=json.dumps(items, ensure_ascii=False),
            source_ids=[str(item["source_id"]) for item in items],
            crawled_at=format_timestamp(datetime.now(UTC)),
            duration_s=seconds,
            calls=outcome.attempts,
        )

    # -- failures ------------------------------------------------------------------------------------------

    def _failed(self, running: Running, exc: CrawlerError) -> str:
        msg = running.msg
        task = msg.message
        if exc.transient:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()  # the crawler answered: it is up, the request is bad
        # A failed half-open probe says the crawler is still down, nothing about the task: no retry spent.
        counts = not (running.probe and exc.transient)
        error_text = f"{exc.code}: {exc.detail}"[:1000]
        if exc.transient and (task.retry < self.settings.max_retry or not counts):
            s = self.settings
            delay = retry_delay(task.retry + 1, s.retry_backoff_base, s.retry_backoff_max) if counts else 0.0
            requeue = partial(
                self.consumer.requeue,
                msg,
                delay,
                marker=self.lifecycle.marker(task.task_id),
                marker_ttl_ms=self.lifecycle.marker_ttl_ms,
                count_retry=counts,
            )
            ended, label = self._write(requeue, msg), "requeued"
            if ended and counts:
                self.metrics.retries.inc()
        else:
            reason = f"{'max_retry' if exc.transient else 'permanent'}: {error_text}"
            ended, label = self._write(lambda: self.consumer.dead_letter(msg, reason), msg), "dead_lettered"
        if not ended:
            return self._not_held(msg, label)
        # the status keys only after the entry was ended by us: a zombie must not overwrite a success
        # (a dead letter's run marker is released by the consumer's on_dead_letter, as for every dead letter)
        self._write(lambda: self._set_failed(task.task_id, error_text), msg)
        self.metrics.tasks_processed.labels(label).inc()
        return label

    def _set_failed(self, task_id: int, error_text: str) -> None:
        with connection_errors(f"status of task {task_id}"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(keys.crawl_status_key(task_id), "failed", ex=keys.STATUS_TTL_SECONDS)
            pipe.set(keys.crawl_message_key(task_id), error_text, ex=keys.STATUS_TTL_SECONDS)
            pipe.execute()

    def _not_held(self, msg: StreamMessage, label: str) -> str:
        log.warning("entry no longer held by this consumer: %s outcome dropped", label, extra=self.extra(msg))
        return "not_held"

    def _cancelled(self, running: Running) -> str:
        msg = running.msg
        if running.cancel_reason == "stopped":
            log.info("crawl cancelled: task stopped", extra=self.extra(msg, code="CANCELLED"))
            self._write(lambda: self.lifecycle.release(msg.message.task_id, msg.id, None), msg)
            return self._end(msg, "cancelled")
        # shutdown or lease lost: leave it pending for a restart of this consumer or another's reclaim
        log.info("crawl interrupted (%s); entry left pending", running.cancel_reason, extra=self.extra(msg))
        return "interrupted"

    def _end(self, msg: StreamMessage, label: str) -> str:
        self._write(lambda: self.consumer.ack(msg.id), msg)
        self.metrics.tasks_processed.labels(label).inc()
        return label

    # -- plumbing -------------------------------------------------------------------------------------------

    def _write(self, action: Callable[[], Any], msg: StreamMessage) -> Any:
        try:
            return self._persist(action)
        except QueueConnectionError as exc:
            self.metrics.redis_errors.labels("outcome").inc()
            log.error("outcome not recorded, entry left pending: %s", exc, extra=self.extra(msg))
        except redis.ResponseError as exc:  # OOM, READONLY...: the guarded scripts wrote nothing
            self.metrics.redis_errors.labels("outcome").inc()
            log.error("Redis refused the outcome, entry left pending: %s", exc, extra=self.extra(msg))
        return None

    def extra(self, msg: StreamMessage, **more: object) -> dict[str, object]:
        return {
            "task_id": msg.message.task_id,
            "entry_id": msg.id,
            "attempt": msg.message.retry + 1,
            "consumer": self.consumer.name,
            **more,
        }


class Persist:
    """How outcomes are written: once, and on a lost Redis connection again with back-off for up to a
    lease, never past the shutdown deadline (``give_up``); after that the entry stays pending for a
    restart or a reclaim. The retry loop is built only when a write fails."""

    def __init__(self, lease_timeout: float, give_up: threading.Event) -> None:
        self._retrying = Retrying(
            retry=retry_if_exception_type(QueueConnectionError),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            stop=stop_after_delay(lease_timeout) | stop_when_event_set(give_up),
            reraise=True,
        )

    def __call__(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except QueueConnectionError:
            return self._retrying(action)


def _item_dict(item: crawler_pb2.Item) -> dict[str, object]:
    return {
        "source_id": item.source_id,
        "title": item.title,
        "price": item.price,
        "image_url": item.image_url,
        "item_url": item.item_url,
        "platform": PLATFORM_NAMES.get(item.platform, "unspecified"),
        "status": item.status,
        "currency": item.currency,
    }


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
