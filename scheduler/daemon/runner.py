"""One task message on a worker thread: spec → FetchRequest → crawl → outcome value.

The read loop has already classified the message (skips and duplicates never get here) and holds its
task's run lock. The runner returns what happened (``outcomes.Success``, ``Retry``, ``DeadLetter``,
``Skip`` or ``LeavePending``); the Outcomes writer ends the entry.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import redis

from scheduler.config.settings import Settings
from scheduler.crawler.breaker import CircuitBreaker
from scheduler.crawler.client import CrawlerClient, FetchOutcome
from scheduler.crawler.mapping import build_request, item_dict
from scheduler.daemon.leases import Running
from scheduler.daemon.outcomes import CIRCUIT_OPEN, LeavePending, Outcome, Skip, Success, after_failure
from scheduler.errors import CrawlCancelledError, CrawlerError
from scheduler.metrics import Metrics
from scheduler.results.goodshunter import GoodsHunterResults, TaskContext
from scheduler.taskqueue import StreamMessage
from scheduler.taskqueue.message import entry_ms, format_timestamp
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.mysql_store import StoreError
from scheduler.tasks.registry import TaskSpec

log = logging.getLogger(__name__)


def entry_time(entry_id: str) -> float:
    """When Redis added the entry (the id's milliseconds), in seconds."""
    return entry_ms(entry_id) / 1000


class TaskRunner:
    """crawl → outcome value. No Redis writes here but a task's own status change (stop, re-enable):
    every ending is the Outcomes writer's."""

    def __init__(
        self,
        settings: Settings,
        crawler: CrawlerClient,
        breaker: CircuitBreaker,
        metrics: Metrics,
        lifecycle: Lifecycle,
        results: GoodsHunterResults | None = None,
    ) -> None:
        self.settings = settings
        self.crawler = crawler
        self.breaker = breaker
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.results = results  # app.task_store = mysql: GoodsHunter's rows and mails

    def run(self, running: Running, spec: TaskSpec | None) -> Outcome:
        msg = running.msg
        task = msg.message
        wait = time.time() - entry_time(msg.id)  # a retry's wait starts at its re-add; no producer clock
        if 0 <= wait < 86400:
            self.metrics.queue_wait.observe(wait)
        requested = task.requested_at(msg.id)
        if task.action == "stop":
            return self._stop(msg, requested)
        assert spec is not None  # the read loop passes only runnable executes
        if not running.probe and running.cancel_reason is None and self.breaker.state != "closed":
            # read while the circuit was closed, started after it opened (or while the half-open probe
            # decides): the call would likely fail and spend a retry; back on the stream instead
            return CIRCUIT_OPEN
        if spec.status == "stopped" and self.lifecycle.resume(task.task_id, requested, spec) != "applied":
            return Skip("skipped")  # deleted meanwhile, or a later stop exists
        context = self._prepare(running)
        if not isinstance(context, TaskContext | None):
            return context  # the row is gone, its guest went idle, or the database failed
        started = time.monotonic()
        running.fetched = True  # the read loop's measure of how quick crawls are
        try:
            fetched = self.crawler.fetch(build_request(spec), cancel=running.token)
        except CrawlCancelledError:
            if running.cancel_reason == "stopped":
                log.info("crawl cancelled: task stopped", extra=self.extra(msg, code="CANCELLED"))
                return Skip("cancelled")
            if running.cancel_reason == "lost":  # ended as not held: frees a lock no one can end
                return Skip("lost")
            return LeavePending(f"crawl interrupted: {running.cancel_reason}")
        except CrawlerError as exc:
            if exc.transient:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()  # the crawler answered: it is up, the request is bad
            return after_failure(self.settings, task.retry, exc, running.probe, time.monotonic() - started)
        self.breaker.record_success()
        failed = self._record(running, context, fetched, started) if context is not None else None
        return failed or self._success(fetched, time.monotonic() - started)

    def _stop(self, msg: StreamMessage, requested: int) -> Outcome:
        """Ordered by when the stop was made; every daemon's crawl of the task is cancelled through the
        control channel the script publishes on."""
        who = f"stop message {msg.id} (source {msg.message.source})"
        if not self.lifecycle.registry.owns_status:
            # the API's rows are the truth: a stop whose row runs again (the user pressed stop, then start)
            # is stale, and must not take the re-enabled run's lock, schedule and retries away
            try:
                [(status, _)] = self.lifecycle.registry.statuses([msg.message.task_id]).values()
            except StoreError as exc:  # the database is away: the stop applies (a sync re-adds a live row)
                log.warning("stop by %s applied without reading its row (%s)", who, exc)
                status = None
            if status == "running":
                log.info("stop by %s ignored: the task's row runs again", who,
                         extra={"task_id": msg.message.task_id})  # fmt: skip
                return Skip("stop")
        if self.lifecycle.stop(msg.message.task_id, who, requested) != "stale":
            self.metrics.stops.inc()
        return Skip("stop")

    def _prepare(self, running: Running) -> TaskContext | Outcome | None:
        """app.task_store = mysql: the row's context for the crawl (None without the MySQL store)."""
        if self.results is None:
            return None
        task = running.msg.message
        try:
            context = self.results.prepare(task.task_id)
        except (StoreError, redis.ResponseError) as exc:
            return self._store_failed(task.retry, exc, 0.0)
        return Skip("skipped") if context is None else context

    def _record(
        self, running: Running, context: TaskContext, fetched: FetchOutcome, started: float
    ) -> Outcome | None:
        """GoodsHunter's rows and events of a successful crawl; an Outcome only when they failed."""
        assert self.results is not None
        msg = running.msg
        try:
            merged = self.results.record(context, fetched.response.items, msg.id)
        except (StoreError, redis.ResponseError) as exc:  # refused (WRONGTYPE, OOM...): a counted retry
            return self._store_failed(msg.message.retry, exc, time.monotonic() - started)
        if not merged.held:  # reclaimed by another daemon meanwhile: its run is the one that counts
            return Skip("lost")
        if merged.new:
            self.metrics.item_events.labels("new_item").inc(merged.new)
        if merged.dropped:
            self.metrics.item_events.labels("price_drop").inc(merged.dropped)
        if merged.new or merged.dropped or merged.unlinked:
            log.info(
                "items merged",
                extra=self.extra(msg, new_items=merged.new, price_drops=merged.dropped,
                                 mails=merged.events, unlinked=merged.unlinked),
            )  # fmt: skip
        return None

    def _store_failed(self, retry: int, exc: StoreError | redis.ResponseError, seconds: float) -> Outcome:
        """The task database failed: retried like a transient crawler failure (the crawl is repeated;
        every write it makes is safe to repeat)."""
        self.metrics.store_errors.inc()
        log.warning("task database error (%s); retried", exc, extra={"retry": retry})
        return after_failure(self.settings, retry, CrawlerError("STORE_UNAVAILABLE", str(exc), transient=True),
                             False, seconds)  # fmt: skip

    @staticmethod
    def _success(fetched: FetchOutcome, seconds: float) -> Success:
        items = [item_dict(item) for item in fetched.response.items]
        return Success(
            status="no_items" if fetched.no_items else "success",
            total_found=fetched.response.total_found,
            items_json=json.dumps(items, ensure_ascii=False),
            source_ids=[str(item["source_id"]) for item in items],
            crawled_at=format_timestamp(datetime.now(UTC)),
            duration_s=seconds,
            calls=fetched.attempts,
        )

    def extra(self, msg: StreamMessage, **more: object) -> dict[str, object]:
        return {"task_id": msg.message.task_id, "entry_id": msg.id, "attempt": msg.message.retry + 1, **more}
