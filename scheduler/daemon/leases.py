"""What a daemon holds: the entries its workers run or whose outcome waits to be written, their leases,
and the cancellation of their crawls (a stop from any daemon or CLI, a lost lease, the shutdown deadline).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from scheduler.crawler.client import CancelToken
from scheduler.errors import QueueConnectionError, SchedulerError
from scheduler.metrics import Metrics
from scheduler.taskqueue import Consumer, StreamMessage, keys
from scheduler.taskqueue._redis import text
from scheduler.tasks.registry import TaskRegistry

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A message a worker holds: its lease is renewed while it is here."""

    msg: StreamMessage
    probe: bool = False  # sent while the crawler's circuit was half-open
    token: CancelToken = field(default_factory=CancelToken)
    started: float = field(default_factory=time.monotonic)
    cancel_reason: str | None = None  # "stopped" (ack), "shutdown" or "lost" (leave it pending)
    started_ms: int = 0  # Redis' clock when its run lock was taken (the crawl starts right after)
    # its outcome is being written: a renewal that finds the entry gone then sees this daemon's own
    # ending, not a loss
    ending: bool = False
    fetched: bool = False  # its crawl went out (the worker called the crawler)


class Leases:
    def __init__(self, consumer: Consumer, metrics: Metrics, registry: TaskRegistry) -> None:
        self.consumer = consumer
        self.registry = registry
        self.redis = consumer.redis
        self.metrics = metrics
        self._held: dict[str, Running] = {}  # entry id → what this daemon holds
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, running: Running) -> None:
        with self._lock:
            self._held[running.msg.id] = running

    def forget(self, running: Running) -> None:
        """The entry is ended (or given up): its lease goes. Only this very hold (a later one of the same
        entry, after a reclaim, is not this one's to end)."""
        with self._lock:
            if self._held.get(running.msg.id) is running:
                del self._held[running.msg.id]

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def split(self, messages: list[StreamMessage]) -> tuple[list[StreamMessage], list[StreamMessage]]:
        """(not held yet, already held): an entry this daemon holds is never started twice."""
        with self._lock:
            held = [m for m in messages if m.id in self._held]
        return [m for m in messages if m not in held], held

    # -- cancellation -----------------------------------------------------------------------------------

    def cancel_task(self, task_id: int, reason: str, made_before: int | None = None) -> None:
        """Cancel this daemon's crawls of the task ("stopped": acked, not retried); with
        ``made_before``, only runs requested before then (a run requested after a stop, i.e. a
        re-enable, is not that stop's to cancel)."""
        with self._lock:
            targets = [r for r in self._held.values() if r.msg.message.task_id == task_id]
        for running in targets:
            msg = running.msg
            if made_before is not None and msg.message.requested_at(msg.id) >= made_before:
                continue
            if msg.message.action == "execute" and running.cancel_reason is None:
                running.cancel_reason = reason
                running.token.cancel()

    def cancel_all(self, reason: str) -> int:
        with self._lock:
            targets = list(self._held.values())
        for running in targets:
            running.cancel_reason = running.cancel_reason or reason
            running.token.cancel()
        return len(targets)

    # -- leases (the "leases" timer) --------------------------------------------------------------------

    def renew(self) -> None:
        """Renew every held entry's lease in one call; stop the crawls whose entry another consumer took
        over or ended, and those of tasks stopped meanwhile (backstop for a stop heard by no channel)."""
        with self._lock:
            ids = list(self._held)
        if not ids:
            return
        owned = set(self.consumer.extend(ids))
        self.metrics.lease_renewals.inc()
        with self._lock:
            lost = [
                self._held[i] for i in ids if i not in owned and i in self._held and not self._held[i].ending
            ]
        if lost:
            self.metrics.leases_lost.inc(len(lost))
            log.warning(
                "%d held entries were reclaimed or ended by another consumer; their crawls stop", len(lost)
            )
            for running in lost:
                running.cancel_reason = running.cancel_reason or "lost"
                running.token.cancel()
        if self.registry.owns_status:  # a Redis read; a slow database must never hold the leases back
            self._cancel_stopped()

    def cancel_stopped(self) -> None:
        """The stopped-task backstop on its own timer (a store queried over the network: MySQL); a
        database away is the read loop's to report, not a traceback per round here."""
        try:
            self._cancel_stopped()
        except SchedulerError as exc:
            log.debug("stopped-row backstop skipped: %s", exc)

    def _cancel_stopped(self, task_ids: list[int] | None = None) -> None:
        """Cancel crawls of tasks stopped by a stop made after their request (read from the registry, so
        a stop heard late, or a re-enable racing it, is judged by when each was made)."""
        if task_ids is None:
            with self._lock:
                task_ids = sorted(
                    {r.msg.message.task_id for r in self._held.values() if r.cancel_reason is None}
                )
        if not task_ids:
            return
        for task_id, (status, made_at) in self.registry.statuses(task_ids).items():
            if status == "stopped":
                # a store whose owner sets statuses (MySQL rows): the row as it is now is the truth, and
                # every crawl of a stopped row ends, whenever it was requested
                self.cancel_task(
                    task_id, "stopped", made_before=made_at if self.registry.owns_status else None
                )
            elif status is None:  # deleted
                self.cancel_task(task_id, "stopped")

    # -- the control channel (its own thread) ---------------------------------------------------------

    def listen(self, halt: threading.Event) -> None:
        """Stops published by any daemon or CLI reach this one at once, until ``halt``."""
        channel = keys.control_channel(self.consumer.stream)
        failures = 0
        while not halt.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
            try:
                pubsub.subscribe(channel)
                failures = 0
                while not halt.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        verb, _, arg = text(message["data"]).partition(" ")
                        if verb == "stop" and arg.isdigit():
                            self._cancel_stopped([int(arg)])
            except (redis.ConnectionError, redis.TimeoutError, QueueConnectionError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("control channel lost (%s); resubscribing", type(exc).__name__)
                halt.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))
            except Exception:
                log.exception("control channel error")
                halt.wait(1.0)
            finally:
                pubsub.close()
