"""Every ending of an entry, in one place: outcomes as values, the retry policy, and the writer that turns
each outcome into one ending (``taskqueue.endings``) and counts and logs it.

The runner and the read loop hand over ``(Running, Outcome)``; one thread takes everything waiting and
ends it with one script call per batch (results, status keys, run lock, receipt and XACK atomically per
entry, only while this consumer still holds it). At low load a batch is one outcome written at once;
under load the batch grows and the per-task cost of Redis round-trips shrinks. An entry stays held (its
lease renewed) until its ending is written or given up; given up, it stays pending for this daemon's
recovery, a restart or another daemon's reclaim.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from scheduler.config.settings import Settings
from scheduler.errors import CrawlerError, QueueConnectionError
from scheduler.metrics import Metrics
from scheduler.taskqueue import Consumer
from scheduler.taskqueue.endings import NOT_HELD, Ending, acked, dead_lettered, retried, succeeded
from scheduler.taskqueue.message import format_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable

    from scheduler.daemon.leases import Leases, Running

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 200
_CLOSE = object()


# -- outcomes --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Success:
    status: str  # "success" or "no_items"
    total_found: int
    items_json: str
    source_ids: list[str]
    crawled_at: str
    duration_s: float
    calls: int


@dataclass(frozen=True, slots=True)
class Retry:
    delay_s: float
    count_retry: bool  # False: a failed half-open probe, not the task's fault
    error_text: str
    code: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    error_text: str
    code: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class Skip:
    """Acknowledged without a crawl: skipped (unknown or stopped task), duplicate, stop, cancelled."""

    label: str


@dataclass(frozen=True, slots=True)
class LeavePending:
    """Not ended on purpose (shutdown, lease lost, no longer held): a restart, recovery or reclaim
    takes the entry up again."""

    why: str
    recover: bool = False  # take it up again at once (an error, not a decision)


Outcome = Success | Retry | DeadLetter | Skip | LeavePending

# Back on the stream at once, for any daemon, with no retry counted and no status written: an entry read
# ahead that no worker started in time (``intake``), or one whose crawl would go out while the crawler's
# circuit is open (``runner``). The run lock goes to the re-added entry.
GIVEN_BACK = Retry(0.0, False, "", "GIVEN_BACK", 0.0)
CIRCUIT_OPEN = Retry(0.0, False, "", "CIRCUIT_OPEN", 0.0)


# -- the retry policy ------------------------------------------------------------------------------------


def retry_delay(retry: int, base_s: float, max_s: float) -> float:
    """Back-off before the ``retry``-th requeue: base * 2^(retry-1), capped, with equal jitter."""
    ceiling: float = min(max_s, base_s * 2 ** max(0, retry - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def after_failure(settings: Settings, retry: int, exc: CrawlerError, probe: bool, seconds: float) -> Outcome:
    """A transient failure is retried (with back-off) until ``max_retry``; a permanent one, or one past
    the limit, is dead-lettered. A failed half-open probe says the crawler is still down, nothing about
    the task: it goes back at once, no retry spent."""
    error_text = f"{exc.code}: {exc.detail}"[:1000]
    counts = not (probe and exc.transient)
    if exc.transient and (retry < settings.max_retry or not counts):
        delay = (
            retry_delay(retry + 1, settings.retry_backoff_base, settings.retry_backoff_max) if counts else 0.0
        )
        return Retry(delay, counts, error_text, exc.code, seconds)
    reason = f"{'max_retry' if exc.transient else 'permanent'}: {error_text}"
    return DeadLetter(reason, error_text, exc.code, seconds)


# -- the writer ------------------------------------------------------------------------------------------


class Persist:
    """How endings are written: once, and on a lost Redis connection again with back-off for up to a
    lease (safe: an ending sent twice gives the same answer), never past the shutdown deadline
    (``give_up``). The retry loop is built only when a write fails."""

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


class Outcomes:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        metrics: Metrics,
        leases: Leases,
        give_up: threading.Event,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.metrics = metrics
        self.leases = leases
        self.left_pending = threading.Event()  # an ending was given up: the read loop recovers the entries
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="outcomes", daemon=True)
        self._persist = Persist(settings.lease_timeout, give_up)

    def start(self) -> Outcomes:
        self._thread.start()
        return self

    def submit(self, running: Running, outcome: Outcome) -> None:
        """Hand over an outcome; the entry must be in ``leases`` (it stays there until written)."""
        self._queue.put((running, outcome))

    def close(self, timeout: float) -> None:
        """Write what is waiting, then stop."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout)

    def _loop(self) -> None:
        closing = False
        while not closing:
            batch: list[tuple[Running, Outcome]] = []
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
                written = False
                try:
                    written = self._flush(batch)
                except Exception:
                    log.exception("%d outcomes not recorded, entries left pending", len(batch))
                finally:
                    for running, _ in batch:
                        self.leases.forget(running)
                # after forgetting them, so that the read loop's recovery finds them not held
                if not written or any(isinstance(o, LeavePending) and o.recover for _, o in batch):
                    self.left_pending.set()

    def _flush(self, batch: list[tuple[Running, Outcome]]) -> bool:
        for running, _ in batch:
            running.ending = True
        ending = [(r, o, self._ending(r, o)) for r, o in batch]
        to_write = [e for _, _, e in ending if e is not None]
        try:
            answers = iter(self._persist(lambda: self.consumer.ender.end(to_write)) if to_write else [])
        except (QueueConnectionError, redis.ResponseError) as exc:
            self.metrics.redis_errors.labels("outcome").inc()
            log.error("%d outcomes not recorded, entries left pending: %s", len(to_write), exc)
            return False
        for running, outcome, e in ending:
            self._report(running, outcome, next(answers) if e is not None else None)
        return True

    def _ending(self, running: Running, outcome: Outcome) -> Ending | None:
        msg = running.msg
        task_id = msg.message.task_id
        if isinstance(outcome, Success):
            return succeeded(msg.id, task_id, status=outcome.status, total_found=outcome.total_found,
                             crawled_at=outcome.crawled_at, items_json=outcome.items_json,
                             started_ms=running.started_ms, source_ids=outcome.source_ids)  # fmt: skip
        if isinstance(outcome, Retry):
            payload = msg.message.requeued(msg.id, outcome.count_retry).encode()
            return retried(msg.id, task_id, payload, round(outcome.delay_s * 1000), outcome.error_text)
        if isinstance(outcome, DeadLetter):
            payload = msg.message.requeued(msg.id).encode()
            return dead_lettered(
                msg.id,
                task_id,
                payload,
                outcome.reason,
                format_timestamp(datetime.now(UTC)),
                outcome.error_text,
            )
        if isinstance(outcome, Skip):
            return acked(msg.id, task_id)
        return None

    def _report(self, running: Running, outcome: Outcome, answer: str | None) -> None:
        msg = running.msg
        extra: dict[str, object] = {"task_id": msg.message.task_id, "entry_id": msg.id,
                                    "attempt": msg.message.retry + 1, "consumer": self.consumer.name}  # fmt: skip
        if isinstance(outcome, LeavePending):
            log.info("entry left pending (%s)", outcome.why, extra=extra)
            return
        if answer == NOT_HELD:
            log.warning("entry no longer held by this consumer: outcome dropped", extra=extra)
            self.metrics.tasks_processed.labels("not_held").inc()
            return
        m = self.metrics
        level = logging.INFO
        if isinstance(outcome, Success):
            label = outcome.status
            m.processing_duration.observe(outcome.duration_s)
            new_items = int(answer.split(":", 1)[1]) if answer and answer.startswith("ok:") else 0
            extra |= {"duration_ms": round(outcome.duration_s * 1000, 1), "code": "OK", "calls": outcome.calls,
                      "new_items": new_items}  # fmt: skip
        elif isinstance(outcome, Retry):
            # no error: not failed but put back, labelled by its code: deferred (a request that waits for
            # its task's run), given_back (read ahead, no worker in time), circuit_open (crawler failing)
            label = "requeued" if outcome.error_text else outcome.code.lower()
            if outcome.error_text:
                m.processing_duration.observe(outcome.duration_s)
            if outcome.count_retry:
                m.retries.inc()
            extra |= {"duration_ms": round(outcome.duration_s * 1000, 1), "code": outcome.code}
        elif isinstance(outcome, DeadLetter):
            label, level = "dead_lettered", logging.WARNING
            m.processing_duration.observe(outcome.duration_s)
            m.dead_letters.labels(outcome.reason.split(":", 1)[0]).inc()
            extra |= {"duration_ms": round(outcome.duration_s * 1000, 1), "code": outcome.code}
        else:
            label = outcome.label
            if label == "duplicate":
                m.duplicates.inc()
            extra |= {"code": label.upper()}
        m.tasks_processed.labels(label).inc()
        log.log(level, "task %s", label, extra=extra | {"outcome": label})
