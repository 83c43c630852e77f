"""One task message, start to end: spec → FetchRequest → crawl → outcome recorded → entry ended.

Runs on a worker thread. Every path ends the entry exactly once, or leaves it pending on purpose
(shutdown, Redis unreachable) so that this consumer's restart or another consumer's reclaim takes it up.
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
from typing import Any

import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from scheduler._proto import crawler_pb2
from scheduler.breaker import CircuitBreaker
from scheduler.config import Settings
from scheduler.crawler import CancelToken, CrawlerClient, FetchOutcome
from scheduler.errors import CrawlCancelledError, CrawlerError, QueueConnectionError
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.registry import TaskSpec
from scheduler.taskqueue import Consumer, StreamMessage, keys
from scheduler.taskqueue.message import format_timestamp

log = logging.getLogger(__name__)

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


@dataclass
class Running:
    """A message a worker holds: its lease is renewed while it is here."""

    msg: StreamMessage
    token: CancelToken = field(default_factory=CancelToken)
    started: float = field(default_factory=time.monotonic)
    cancel_reason: str | None = None  # "stopped" (task stopped: ack) or "shutdown" (leave pending)
    crawl_started_ms: int = 0
    probe: bool = False  # sent while the crawler's circuit was half-open


class TaskRunner:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        consumer: Consumer,
        crawler: CrawlerClient,
        breaker: CircuitBreaker,
        metrics: Metrics,
        lifecycle: Lifecycle,
        on_stop: Callable[[int, str], None],
    ) -> None:
        self.settings = settings
        self.redis = client
        self.consumer = consumer
        self.crawler = crawler
        self.breaker = breaker
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.on_stop = on_stop
        self.scripts = consumer.scripts
        self.results = keys.results_stream(settings.task_queue_stream)
        # Outcome writes survive a Redis blip for up to a lease; past that the entry stays pending.
        self._persist = Retrying(
            retry=retry_if_exception_type(QueueConnectionError),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            stop=stop_after_delay(settings.lease_timeout),
            reraise=True,
        )

    def run(self, running: Running, spec: TaskSpec | None) -> str:
        """Handle one message; returns the outcome label (for metrics and tests)."""
        msg = running.msg
        task = msg.message
        # from the entry's own id (Redis' clock when it was added): a retry's or a replayed dead letter's
        # wait starts at its re-add, and a producer's skewed clock does not count
        wait = time.time() - int(msg.id.split("-", 1)[0]) / 1000
        if 0 <= wait < 86400:
            self.metrics.queue_wait.observe(wait)
        if task.action == "stop":
            self.on_stop(task.task_id, f"stop message {msg.id} (source {task.source})")
            return self._end(msg, "stop")
        if (
            spec is not None
            and spec.status == "stopped"
            and self._restarts(task.source, task.timestamp, spec)
        ):
            spec = spec.with_status("running") if self.lifecycle.resume(task.task_id) else None
        if spec is None or spec.status == "stopped":
            reason = "unknown task" if spec is None else "task stopped"
            log.info("task skipped: %s", reason, extra=self._extra(msg, code="SKIPPED"))
            self._write(lambda: self.lifecycle.release(task.task_id, msg.id, None), msg)
            return self._end(msg, "skipped")
        claim = self._write(
            lambda: self.lifecycle.claim(task.task_id, msg.id, task.timestamp, task.retry), msg
        )
        if claim is None:
            return "interrupted"  # Redis is gone: leave the entry pending
        if claim != "run":
            self.metrics.duplicates.inc()
            log.info("duplicate execute collapsed (%s)", claim, extra=self._extra(msg, code="DUPLICATE"))
            return self._end(msg, "duplicate")
        started = time.monotonic()
        running.crawl_started_ms = int(time.time() * 1000)
        try:
            outcome = self.crawler.fetch(build_request(spec), cancel=running.token)
        except CrawlCancelledError:
            return self._cancelled(running)
        except CrawlerError as exc:
            label, code, calls = self._failed(running, exc), exc.code, None
        else:
            self.breaker.record_success()
            label, code, calls = self._succeeded(running, outcome), outcome.code, outcome.attempts
        seconds = time.monotonic() - started
        self.metrics.processing_duration.observe(seconds)
        extra = self._extra(msg, duration_ms=round(seconds * 1000, 1), outcome=label, code=code, calls=calls)
        log.log(logging.WARNING if label == "dead_lettered" else logging.INFO, "task %s", label, extra=extra)
        return label

    # -- outcomes -------------------------------------------------------------------------------------------

    @staticmethod
    def _restarts(source: str, created: datetime, spec: TaskSpec) -> bool:
        """A user's execute made after the task was stopped starts it again (a re-enabled task)."""
        return source == "user_create" and created.timestamp() > spec.updated_at

    def _succeeded(self, running: Running, outcome: FetchOutcome) -> str:
        msg = running.msg
        status = "no_items" if outcome.no_items else "success"
        task_id = msg.message.task_id
        items = [_item_dict(item) for item in outcome.response.items]
        s = self.settings

        def record() -> None:
            pipe = self.redis.pipeline(transaction=False)
            self.scripts.record_results(
                keys=[keys.seen_items_key(s.task_queue_stream, task_id), self.results],
                args=[
                    task_id, msg.id, outcome.response.total_found, status, int(s.seen_ttl), s.results_maxlen,
                    format_timestamp(datetime.now(UTC)), json.dumps(items, ensure_ascii=False),
                    *(str(item["source_id"]) for item in items),
                ],
                client=pipe,
            )  # fmt: skip
            pipe.set(keys.crawl_status_key(task_id), status, ex=keys.STATUS_TTL_SECONDS)
            if status == "no_items":
                pipe.set(keys.crawl_message_key(task_id), "no_items", ex=keys.STATUS_TTL_SECONDS)
            else:
                pipe.delete(keys.crawl_message_key(task_id))
            self.lifecycle.release(task_id, msg.id, running.crawl_started_ms, pipe)
            pipe.xack(self.consumer.stream, self.consumer.group, msg.id)
            self._guarded(pipe.execute)

        self._write(record, msg)
        self.metrics.tasks_processed.labels(status).inc()
        return status

    def _failed(self, running: Running, exc: CrawlerError) -> str:
        msg = running.msg
        task = msg.message
        error_text = f"{exc.code}: {exc.detail}"[:1000]
        if exc.transient:
            self.breaker.record_failure()
        self._write(lambda: self._set_failed(task.task_id, error_text), msg)
        # A failed half-open probe says the crawler is still down, nothing about the task: no retry spent.
        counts = not (running.probe and exc.transient)
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
            if self._write(requeue, msg) and counts:
                self.metrics.retries.inc()
            self.metrics.tasks_processed.labels("requeued").inc()
            return "requeued"
        kind = "max_retry" if exc.transient else "permanent"
        reason = f"{kind}: {error_text}"
        self._write(lambda: self.consumer.dead_letter(msg, reason), msg)  # counted by on_dead_letter
        self._write(lambda: self.lifecycle.release(task.task_id, msg.id, None), msg)
        self.metrics.tasks_processed.labels("dead_lettered").inc()
        return "dead_lettered"

    def _cancelled(self, running: Running) -> str:
        if running.cancel_reason == "stopped":
            msg = running.msg
            log.info("crawl cancelled: task stopped", extra=self._extra(msg, code="CANCELLED"))
            self._write(lambda: self.lifecycle.release(msg.message.task_id, msg.id, None), msg)
            return self._end(msg, "cancelled")
        # shutdown: leave it pending for this consumer's restart or another consumer's reclaim
        log.info("crawl interrupted by shutdown; left pending", extra=self._extra(running.msg))
        return "interrupted"

    def _set_failed(self, task_id: int, error_text: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.crawl_status_key(task_id), "failed", ex=keys.STATUS_TTL_SECONDS)
        pipe.set(keys.crawl_message_key(task_id), error_text, ex=keys.STATUS_TTL_SECONDS)
        self._guarded(pipe.execute)

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
            log.error("outcome not recorded, entry left pending: %s", exc, extra=self._extra(msg))
            return None

    @staticmethod
    def _guarded(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueConnectionError(f"Redis unavailable ({type(exc).__name__}: {exc})") from exc

    def _extra(self, msg: StreamMessage, **more: object) -> dict[str, object]:
        return {
            "task_id": msg.message.task_id,
            "entry_id": msg.id,
            "attempt": msg.message.retry + 1,
            "consumer": self.consumer.name,
            **more,
        }


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
    """Counts busy workers; the read loop waits here so it never holds more messages than free workers."""

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
