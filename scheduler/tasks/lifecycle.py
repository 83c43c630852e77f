"""Task lifecycle: registering, the periodic schedule, run locks, and stop / re-enable / delete.

A task's life: ``register`` stores its spec, puts it on the schedule (next run one interval from now) and
publishes a ``user_create`` execute. Every daemon runs ``publish_due`` on a timer; the script publishes each
due task exactly once per period, measured from the scheduled time. A per-task **run lock**, held from
publish (or first delivery) until the run ends, collapses duplicate executes and keeps the publisher from
stacking runs behind a slow or failing crawler; it counts only while the entry it names is queued,
pending or parked, so a leaked lock costs one check, not its TTL.

Status changes (``stop``, ``resume``, ``register``, ``delete``) are one script each, ordered by when the
request was made on Redis' clock (a stop message's entry id), never by when a daemon got to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from scheduler.config.settings import Settings
from scheduler.taskqueue import Producer, keys
from scheduler.taskqueue._redis import connection_errors, text
from scheduler.taskqueue.message import format_timestamp
from scheduler.taskqueue.scripts import Scripts
from scheduler.tasks.registry import RedisTaskRegistry, TaskRegistry, TaskSpec

log = logging.getLogger(__name__)

Verdict = Literal["run", "healed", "duplicate", "behind", "satisfied", "gone"]
Change = Literal["applied", "stale", "unknown"]


def lock_ttl_s(settings: Settings) -> float:
    """How long a run lock outlives a crashed holder at most (a leak is healed sooner, at the next
    request): longer than any run can legitimately take, and never under an hour or three periods."""
    one_run = settings.crawler_attempts * settings.crawler_deadline + settings.retry_backoff_max
    return max(3600.0, 3 * settings.schedule_interval, (settings.max_retry + 1) * one_run)


@dataclass(frozen=True, slots=True)
class RunRequest:
    """An execute entry asking for its task's run lock."""

    task_id: int
    entry_id: str
    requested_at: int  # when the request was made: its first entry's id as a stamp (entry_stamp)
    retry: int
    by_user: bool  # source user_create: also orders later-processed stops


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        scripts: Scripts | None = None,
        registry: TaskRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = scripts or Scripts(client)
        self.registry: TaskRegistry = registry or RedisTaskRegistry(client)
        stream = settings.task_queue_stream
        self.stream = stream
        self.group = settings.task_queue_group
        self.schedule = keys.schedule_set(stream)
        self.intervals = keys.intervals_hash(stream)
        self.last_success = keys.last_success_hash(stream)
        self.delayed = keys.delayed_set(stream)
        self.lock_ttl_ms = int(lock_ttl_s(settings) * 1000)

    def lock_key(self, task_id: int) -> str:
        return keys.run_lock_key(self.stream, task_id)

    # -- status changes ---------------------------------------------------------------------------------

    def register(self, specs: Iterable[TaskSpec]) -> dict[int, str]:
        """Store specs; schedule the running ones and publish their first run. Returns task → entry id."""
        specs = list(specs)
        self.registry.put_many(specs)
        with connection_errors("schedule tasks"):
            pipe = self.redis.pipeline(transaction=False)
            for spec in specs:
                op = "run" if spec.status == "running" else "stop"
                self._queue_change(pipe, spec.task_id, op, None, "", self.interval_of(spec))
            pipe.execute()
        running = [s for s in specs if s.status == "running"]
        ids = Producer(self.redis, stream=self.stream).submit_many(
            [s.task_id for s in running], "user_create"
        )
        return {spec.task_id: entry_id for spec, entry_id in zip(running, ids, strict=True)}

    def resume(self, task_id: int, requested_at: int | None = None, spec: TaskSpec | None = None) -> Change:
        """A user asked a stopped task to run again: running, back on the schedule, unless a stop made
        after ``requested_at`` exists ('stale') or the task was deleted ('unknown')."""
        change = self._change(task_id, "run", requested_at, "", self.interval_of(spec) if spec else 0)
        if change == "applied":
            log.info("task resumed", extra={"task_id": task_id})
        return change

    def stop(self, task_id: int, who: str, requested_at: int | None = None) -> Change:
        """Mark stopped, unschedule, drop its parked retry and run lock, and tell every daemon (pub/sub),
        unless a request to run it was made after ``requested_at`` (then 'stale': nothing changes)."""
        change = self._change(task_id, "stop", requested_at, who)
        log.info(
            "task stopped by %s"
            if change != "stale"
            else "stop by %s is older than the task's last start: ignored",
            who,
            extra={"task_id": task_id, "stopped_by": who, "known": change != "unknown"},
        )
        return change

    def delete(self, task_id: int, who: str) -> bool:
        """Stop everywhere and forget the task (spec, schedule, seen items, last success)."""
        return self._change(task_id, "delete", None, who) != "unknown"

    def _change(
        self, task_id: int, op: str, requested_at: int | None, who: str, interval_s: float = 0
    ) -> Change:
        with connection_errors(f"{op} task {task_id}"):
            answer, _ = self._queue_change(self.redis, task_id, op, requested_at, who, interval_s)
        return text(answer)  # type: ignore[return-value]

    def _queue_change(
        self, client: Any, task_id: int, op: str, requested_at: int | None, who: str, interval_s: float = 0
    ) -> Any:
        keys_ = [
            keys.task_spec_key(task_id),
            self.schedule,
            self.intervals,
            self.delayed,
            self.lock_key(task_id),
            self.last_success,
            keys.seen_items_key(self.stream, task_id),
            keys.TASK_INDEX_KEY,
            self.stream,
            keys.run_requests_hash(self.stream),
        ]
        if op == "run" and not interval_s:
            spec = self.registry.get(task_id)
            interval_s = self.interval_of(spec) if spec else self.settings.schedule_interval
        args = [task_id, op, "" if requested_at is None else requested_at, int(interval_s * 1000),
                who[:200], self.group, keys.control_channel(self.stream)]  # fmt: skip
        return self.scripts.run("set_status", keys_, args, client=client)

    def interval_of(self, spec: TaskSpec) -> float:
        return spec.interval_s or self.settings.schedule_interval

    # -- the periodic publisher (every daemon, on a timer) -----------------------------------------------

    def publish_due(self, limit: int = 1000) -> tuple[int, int, float | None]:
        """Publish due runs; returns (published, skipped, seconds until the next is due)."""
        now_text = format_timestamp(datetime.now(UTC))
        with connection_errors("publish periodic runs"):
            published, skipped, next_ms = self.scripts.run(
                "publish_due",
                [self.schedule, self.intervals, self.stream, self.delayed],
                [now_text, limit, keys.run_lock_prefix(self.stream), self.lock_ttl_ms, self.group],
            )
        return int(published), int(skipped), (None if int(next_ms) < 0 else int(next_ms) / 1000)

    def sweep_locks(self, cursor: int = 0, scans: int = 10) -> tuple[int, int]:
        """Delete run locks naming no live run, a few SCAN pages at a time. Returns (cursor, deleted);
        cursor 0 when a pass is complete."""
        deleted = 0
        pattern = keys.run_lock_prefix(self.stream) + "*"
        with connection_errors("sweep run locks"):
            for _ in range(scans):
                cursor, found = self.redis.scan(cursor, match=pattern, count=1000)
                if found:
                    lock_keys = [text(k) for k in found]
                    deleted += int(self.scripts.run("sweep_locks", [self.stream, self.delayed, *lock_keys],
                                                    [self.group]))  # fmt: skip
                if cursor == 0:
                    break
        return int(cursor), deleted

    # -- run locks (the read loop) -----------------------------------------------------------------------

    def lock_runs(self, requests: list[RunRequest], consumer: str, pipe: Any = None) -> Any:
        """Queue (on ``pipe``) or run the run-lock script for these requests; ``verdicts`` reads the reply."""
        keys_ = [self.stream, self.delayed, self.last_success, keys.run_requests_hash(self.stream),
                 *(self.lock_key(r.task_id) for r in requests)]  # fmt: skip
        args: list[str | int] = [
            self.group,
            consumer,
            self.lock_ttl_ms,
            int(self.settings.lease_timeout * 1000),
        ]
        for r in requests:
            args += [r.entry_id, r.task_id, r.requested_at, r.retry, "1" if r.by_user else ""]
        if pipe is not None:
            self.scripts.queue(pipe, "lock_runs", keys_, args)
            return None
        with connection_errors("take run locks"):
            return self.scripts.run("lock_runs", keys_, args)

    @staticmethod
    def verdicts(reply: Any) -> tuple[int, list[Verdict]]:
        """(Redis time in ms when the locks were taken, one verdict per request)."""
        now_ms, *verdicts = reply
        return int(now_ms), [text(v) for v in verdicts]  # type: ignore[misc]
