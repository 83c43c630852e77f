"""Task lifecycle: registering, the periodic schedule, run markers, and stop.

A task's life: ``register`` stores its spec, puts it on the schedule (next run one interval from now) and
publishes a ``user_create`` execute. Every daemon runs ``publish_due`` on a timer; the script publishes each
due task exactly once per period, measured from the scheduled time. A per-task run marker, held from
publish (or first delivery) until the run ends, collapses duplicate executes and keeps the publisher from
stacking runs behind a slow or failing crawler. ``stop`` marks the task stopped, takes it off the schedule
and out of the delayed retries, and tells every daemon (pub/sub) to cancel a crawl of it in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from scheduler.config import Settings
from scheduler.registry import RedisTaskRegistry, TaskSpec
from scheduler.taskqueue import Producer, keys
from scheduler.taskqueue._redis import connection_errors, text
from scheduler.taskqueue.message import format_timestamp
from scheduler.taskqueue.scripts import Scripts

log = logging.getLogger(__name__)

ClaimResult = Literal["run", "duplicate", "satisfied"]


def marker_ttl_s(settings: Settings) -> float:
    """How long a run marker outlives a crashed holder: longer than any run can legitimately take (every
    attempt of every retry, with back-off), and never under an hour or three periods."""
    one_run = settings.crawler_attempts * settings.crawler_deadline + settings.retry_backoff_max
    return max(3600.0, 3 * settings.schedule_interval, (settings.max_retry + 1) * one_run)


class Lifecycle:
    def __init__(self, settings: Settings, client: redis.Redis, scripts: Scripts | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = scripts or Scripts(client)
        self.registry = RedisTaskRegistry(client)
        stream = settings.task_queue_stream
        self.stream = stream
        self.schedule = keys.schedule_set(stream)
        self.intervals = keys.intervals_hash(stream)
        self.last_success = keys.last_success_hash(stream)
        self.marker_ttl_ms = int(marker_ttl_s(settings) * 1000)

    def marker(self, task_id: int) -> str:
        return keys.inflight_key(self.stream, task_id)

    # -- registering and stopping ---------------------------------------------------------------------

    def register(self, specs: Iterable[TaskSpec]) -> dict[int, str]:
        """Store specs; schedule the running ones and publish their first run. Returns task → entry id."""
        specs = list(specs)
        self.registry.put_many(specs)
        running = [s for s in specs if s.status == "running"]
        with connection_errors("schedule tasks"):
            pipe = self.redis.pipeline(transaction=False)
            now_ms = int(time.time() * 1000)
            for spec in specs:
                self._drop_orphan_retry_marker(pipe, spec.task_id)
                if spec.status == "running":
                    interval_ms = int(self.interval_of(spec) * 1000)
                    pipe.hset(self.intervals, str(spec.task_id), interval_ms)
                    pipe.zadd(self.schedule, {str(spec.task_id): now_ms + interval_ms})
                else:
                    pipe.zrem(self.schedule, str(spec.task_id))
                    pipe.hdel(self.intervals, str(spec.task_id))
            pipe.execute()
        ids = Producer(self.redis, stream=self.stream).submit_many(
            [s.task_id for s in running], "user_create"
        )
        return {spec.task_id: entry_id for spec, entry_id in zip(running, ids, strict=True)}

    def resume(self, task_id: int) -> bool:
        """A stopped task asked to run again (a ``user_create`` execute): running, back on the schedule."""
        spec = self.registry.set_status(task_id, "running")
        if spec is None:
            return False
        interval_ms = int(self.interval_of(spec) * 1000)
        with connection_errors("schedule task"):
            pipe = self.redis.pipeline(transaction=False)
            self._drop_orphan_retry_marker(pipe, task_id)
            pipe.hset(self.intervals, str(task_id), interval_ms)
            pipe.zadd(self.schedule, {str(task_id): int(time.time() * 1000) + interval_ms})
            pipe.execute()
        log.info("task resumed", extra={"task_id": task_id})
        return True

    def stop(self, task_id: int, who: str) -> bool:
        """Mark stopped, unschedule, drop parked retries, and tell every daemon. False if unregistered."""
        spec = self.registry.set_status(task_id, "stopped", by=who)  # records stopped_by / stopped_at
        with connection_errors(f"stop task {task_id}"):
            removed = self.scripts.stop_task(
                keys=[self.schedule, self.intervals, keys.delayed_set(self.stream), self.marker(task_id)],
                args=[task_id],
            )
            self.redis.publish(keys.control_channel(self.stream), f"stop {task_id}")
        log.info(
            "task stopped by %s",
            who,
            extra={
                "task_id": task_id,
                "stopped_by": who,
                "known": spec is not None,
                "retries_dropped": removed,
            },
        )
        return spec is not None

    def _drop_orphan_retry_marker(self, pipe: redis.Redis, task_id: int) -> None:
        """A ``retry:`` marker whose retry no longer waits (stopped, or lost) would block the task's runs
        until its TTL: starting the task clears it. A retry still parked keeps its marker."""
        self.scripts.drop_orphan_marker(
            keys=[self.marker(task_id), keys.delayed_set(self.stream)], args=[task_id], client=pipe
        )

    def delete(self, task_id: int, who: str) -> bool:
        self.stop(task_id, who)
        return self.registry.delete(task_id)

    def interval_of(self, spec: TaskSpec) -> float:
        return spec.interval_s or self.settings.schedule_interval

    def next_runs(self, task_ids: list[int]) -> dict[int, str]:
        if not task_ids:
            return {}
        with connection_errors("read schedule"):
            scores = self.redis.zmscore(self.schedule, [str(t) for t in task_ids])
        return {
            task_id: format_timestamp(datetime.fromtimestamp(score / 1000, UTC))
            for task_id, score in zip(task_ids, scores, strict=True)
            if score is not None
        }

    # -- the periodic publisher (every daemon, on a timer) -----------------------------------------------

    def publish_due(self, limit: int = 1000) -> tuple[int, int, float | None]:
        """Publish due runs; returns (published, skipped, seconds until the next is due)."""
        now_text = format_timestamp(datetime.now(UTC))
        with connection_errors("publish periodic runs"):
            published, skipped, next_ms = self.scripts.publish_due(
                keys=[self.schedule, self.intervals, self.stream],
                args=[now_text, limit, keys.inflight_key(self.stream, 0)[:-1], self.marker_ttl_ms],
            )
        return int(published), int(skipped), (None if int(next_ms) < 0 else int(next_ms) / 1000)

    # -- run markers (worker side) ----------------------------------------------------------------------

    def claim(self, task_id: int, entry_id: str, retry: int) -> ClaimResult:
        with connection_errors(f"claim run of task {task_id}"):
            [verdict] = self.claim_batch([(task_id, entry_id, retry)])
        return text(verdict)  # type: ignore[return-value]

    def claim_batch(self, items: list[tuple[int, str, int]], pipe: redis.Redis | None = None) -> Any:
        """Verdicts for (task id, entry id, retry) items, in one script call (queued on ``pipe`` if given).

        A request's time is its entry id's (Redis' clock when it was added), so a producer's clock and a
        message without a timestamp cannot make an execute look older than it is."""
        keys_ = [self.last_success, *(self.marker(task_id) for task_id, _, _ in items)]
        args: list[str | int] = [self.marker_ttl_ms]
        for task_id, entry_id, retry in items:
            args += [entry_id, task_id, entry_id.split("-", 1)[0], retry]
        if pipe is not None:
            self.scripts.queue(pipe, "claim_batch", keys_, args)
            return None
        return self.scripts.run("claim_batch", keys_, args)

    def release(
        self, task_id: int, entry_id: str, succeeded_at_ms: int | None, pipe: redis.Redis | None = None
    ) -> None:
        """End the run's marker; may be queued on a caller's pipeline (one round-trip with the outcome)."""
        keys_ = [self.marker(task_id), self.last_success]
        args: list[str | int] = [entry_id, task_id, "" if succeeded_at_ms is None else succeeded_at_ms]
        if pipe is not None:
            self.scripts.queue(pipe, "release_run", keys_, args)
        else:
            self.scripts.run("release_run", keys_, args)
