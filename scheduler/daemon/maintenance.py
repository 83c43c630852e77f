"""The maintenance jobs every daemon runs on one timer thread, all safe with any number of daemons:
delayed-retry mover, periodic publisher, heartbeat, queue gauges, crawler health, trimming, reaping."""

from __future__ import annotations

import logging
from collections.abc import Callable

from scheduler.config.settings import Settings
from scheduler.crawler.breaker import CircuitBreaker
from scheduler.crawler.client import CrawlerClient
from scheduler.daemon.startup import held, release_unclaimed  # the consumer name claimed at start-up
from scheduler.daemon.timers import Job, heartbeat_payload
from scheduler.inspect.queue import queue_gauges
from scheduler.metrics import Metrics
from scheduler.taskqueue import Consumer, keys
from scheduler.taskqueue._redis import connection_errors
from scheduler.tasks.lifecycle import Lifecycle

log = logging.getLogger(__name__)

REAP_IDLE_MS = 3_600_000  # a consumer idle for an hour that owns nothing is gone for good


class Maintenance:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        lifecycle: Lifecycle,
        crawler: CrawlerClient,
        breaker: CircuitBreaker,
        metrics: Metrics,
        busy: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.redis = consumer.redis
        self.lifecycle = lifecycle
        self.crawler = crawler
        self.breaker = breaker
        self.metrics = metrics
        self.busy = busy
        self._sweep_cursor = 0
        self.sweep_job = Job("run-lock sweep", lambda: 30.0, self.sweep_locks)
        self.heartbeat_key = keys.heartbeat_key(
            settings.task_queue_stream, settings.task_queue_group, settings.consumer_name
        )

    def jobs(self) -> list[Job]:
        s = self.settings
        return [
            Job("delayed-retry mover", lambda: 1.0, self.move_due),
            Job("periodic publisher", lambda: 1.0, self.publish_due),
            Job("heartbeat", lambda: s.heartbeat_interval, self.heartbeat),
            Job("queue gauges", lambda: 5.0, self.refresh_gauges),
            Job("crawler health", lambda: min(5.0, s.breaker_open_duration), self.check_crawler),
            Job("trim", lambda: s.trim_interval, self.trim),
            Job("consumer reaper", lambda: 600.0, self.reap),
            self.sweep_job,
        ]

    def move_due(self) -> float | None:
        moved, next_in = self.consumer.move_due()
        if moved:
            log.debug("moved %d due retries into the stream", moved)
        return next_in

    def publish_due(self) -> float | None:
        published, skipped, next_in = self.lifecycle.publish_due()
        if published:
            self.metrics.periodic_published.inc(published)
        if skipped:
            self.metrics.periodic_skipped.inc(skipped)
            log.info("%d periodic runs skipped: previous run still queued, retrying or running", skipped)
        return next_in

    def heartbeat(self) -> None:
        s = self.settings
        claim = held(self.redis, self.heartbeat_key)
        payload = heartbeat_payload(s.consumer_name, self.busy(), s.worker_pool_size, self.breaker.state,
                                    claim.identity if claim else None)  # fmt: skip
        with connection_errors("heartbeat"):
            old = self.redis.set(
                self.heartbeat_key, payload, ex=max(1, int(s.heartbeat_interval * 3)), get=True
            )
        if claim is not None:
            claim.overwrote(old)  # another daemon's heartbeat replaced: say so, once

    def refresh_gauges(self) -> None:
        s, m = self.settings, self.metrics
        with connection_errors("queue gauges"):
            found = queue_gauges(self.redis, s.task_queue_stream, s.task_queue_group)
        for gauge, value in (
            (m.queue_length, found.length), (m.queue_pending, found.pending), (m.queue_lag, found.lag),
            (m.delayed_retries, found.delayed), (m.dlq_length, found.dead_letters),
        ):  # fmt: skip
            if value is not None:  # not read this time: the gauge keeps its last value
                gauge.set(value)

    def check_crawler(self) -> None:
        """A crawler that says NOT_SERVING opens the circuit before tasks spend retries finding out.
        No health service (the original crawler) or no answer says nothing here: calls will tell."""
        if self.breaker.state == "closed" and self.crawler.health_status(timeout_s=2.0) == "NOT_SERVING":
            log.warning("crawler health check says NOT_SERVING: opening the circuit")
            self.breaker.force_open()

    def trim(self) -> None:
        removed = self.consumer.trim(self.settings.stream_maxlen)
        if removed:
            log.info("trimmed %d acknowledged entries", removed)

    def reap(self) -> None:
        removed = self.consumer.reap_consumers(min_idle_ms=REAP_IDLE_MS)
        if removed:
            log.info("removed idle consumers that owned nothing: %s", ", ".join(removed))

    def sweep_locks(self) -> float | None:
        self._sweep_cursor, deleted = self.lifecycle.sweep_locks(self._sweep_cursor)
        if deleted:
            self.metrics.run_locks_healed.inc(deleted)
            log.info("deleted %d run locks that named no live run", deleted)
        return 1.0 if self._sweep_cursor else None  # a pass in progress goes on in a second

    def clear_heartbeat(self) -> None:
        """At shutdown: delete the heartbeat if it is still this daemon's (never a successor's, never
        that of the live daemon a refused start-up found on this name)."""
        claim = held(self.redis, self.heartbeat_key)
        if claim is not None:
            claim.release()
        else:
            release_unclaimed(self.redis, self.heartbeat_key)
