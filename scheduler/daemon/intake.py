"""The read loop's turn: read (or recover, or reclaim) as many entries as there are free worker slots,
classify the batch in one round-trip, hand each entry on. The daemon runs ``turn`` in its main thread.

It reads as many entries as there are free workers, blocks in XREADGROUP (so a new task starts within
milliseconds), and stops reading while the crawler's circuit is open. Each batch is classified in one
round-trip (specs and run locks, with the next batch's read in the same pipeline): skips and duplicates
go straight to the writer, stops to a thread of their own (never behind a crawl), crawls to the workers.
A read's reply is never re-sent: after any error the next turn recovers this consumer's pending entries
that no thread holds.

Read-ahead: while crawls are quick (``AHEAD_QUICK_S``) and the circuit is closed, it reads up to
``AHEAD_MAX`` entries more than there are free workers, so a worker that ends a crawl finds the next one
waiting instead of idling through the read's round trips. Such an entry is held by this daemon (lease
renewed, run lock taken) but not started, so it is bounded: one not started within
``AHEAD_WAIT_S`` (the crawls are hung, or slow all at once) is given back to the stream for any daemon, no
retry counted, and read-ahead pauses (``AHEAD_PAUSE_S``, then until a crawl has ended quickly). A worker
and the give-back each claim the very hold they were handed: exactly one of them owns its slot and its
ending.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from scheduler.config.settings import Settings
from scheduler.crawler.breaker import CircuitBreaker
from scheduler.crawler.client import CrawlerClient
from scheduler.daemon.leases import Leases, Running
from scheduler.daemon.outcomes import GIVEN_BACK, LeavePending, Outcome, Outcomes, Skip
from scheduler.daemon.routing import route
from scheduler.daemon.runner import TaskRunner
from scheduler.daemon.slots import Slots
from scheduler.daemon.workers import WorkerPool
from scheduler.errors import QueueConnectionError
from scheduler.metrics import Metrics
from scheduler.taskqueue import Consumer, StreamMessage
from scheduler.taskqueue._redis import connection_errors
from scheduler.tasks.lifecycle import Lifecycle, RunRequest, Verdict
from scheduler.tasks.registry import TaskSpec

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # XREADGROUP BLOCK: bounds how long a stop request waits for the read loop
AHEAD_MAX = 4  # entries read beyond the free workers (at most a quarter of the pool)
AHEAD_QUICK_S = 0.25  # read ahead only while a crawl takes less than this (moving average)
AHEAD_WAIT_S = 1.0  # an entry no worker started within this is given back to the stream
AHEAD_PAUSE_S = 10.0  # no read-ahead for this long after a give-back


class Intake:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        lifecycle: Lifecycle,
        leases: Leases,
        slots: Slots,
        writer: Outcomes,
        runner: TaskRunner,
        crawler: CrawlerClient,
        breaker: CircuitBreaker,
        metrics: Metrics,
        stopping: threading.Event,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.lifecycle = lifecycle
        self.registry = lifecycle.registry
        self.leases = leases
        self.slots = slots
        self.writer = writer
        self.runner = runner
        self.crawler = crawler
        self.breaker = breaker
        self.metrics = metrics
        self._stopping = stopping
        self.workers: WorkerPool | None = None  # set by the daemon's start()
        self.stops: WorkerPool | None = None  # stop messages' own thread, set by start()
        self.ahead = min(AHEAD_MAX, slots.size // 4)
        # moving average of a crawl: read-ahead only while crawls are quick (not before one has proved it)
        self.crawl_s = AHEAD_QUICK_S
        self._ahead_paused_until = 0.0
        # handed to the workers, not started yet (oldest first): a worker takes its entry out before it
        # starts, a give-back takes it out instead; whoever takes it owns its slot and its ending
        self._waiting: dict[str, Running] = {}
        self._waiting_lock = threading.Lock()
        self.batch: list[StreamMessage] = []  # read, slots reserved, not yet started
        # A read, reclaim or batch whose reply was lost or dropped may have left entries in this consumer's
        # pending list that no thread holds: take them up before reading on.
        self.recover = False
        self.next_reclaim = 0.0
        self.next_health = 0.0

    def turn(self) -> None:
        if self._waiting:
            self.give_back_stale()
        if self.batch:  # read in the previous round-trip, slots reserved: start it, read on
            batch, self.batch = self.batch, []  # out of hand first: whatever fails, never started twice
            self.batch = self._advance(batch, read_more=True)
            return
        free = self._free(wait=0.5)
        if free <= 0 or self._stopping.is_set():
            if free <= 0:
                self._stopping.wait(0.001)  # the writer is behind: let it catch up
            return
        if self.breaker.state == "half_open" and not self._half_open_check():
            return
        if not self.breaker.allow():
            self._stopping.wait(0.2)
            return
        probe = self.breaker.state == "half_open"
        if probe:
            free = 1  # a crawler without a health service: one probe task decides
        messages: list[StreamMessage] = []
        if self.writer.left_pending.is_set():
            self.writer.left_pending.clear()
            self.recover = True
        if self.recover and not self.consumer.resuming:
            messages = self._recovered(free)
        # own pending entries come back through the resume read, never through reclaim
        if not messages and not self.consumer.resuming and time.monotonic() >= self.next_reclaim:
            messages = self._reclaim(free)
        if not messages:
            messages = self.consumer.read(free, block_ms=BLOCK_MS)
        if messages:
            self.slots.take(len(messages))
            self.batch = self._advance(messages, read_more=not probe, probe=probe)

    def _free(self, wait: float = 0.0) -> int:
        """Worker slots free now, with the read-ahead's; entries held but not yet recorded count too (at
        most a pool's worth may wait for the writer)."""
        limit = self._limit()
        free = self.slots.wait_free(timeout=wait, limit=limit) if wait else limit - self.slots.busy
        # never negative: a batch in hand reserves slots before it is handed on, and a count below 1 is
        # no read at all (XREADGROUP refuses COUNT 0 or less)
        return max(0, min(free, 2 * self.slots.size - len(self.leases)))

    def _limit(self) -> int:
        """Entries the workers may be handed: one per worker, and the read-ahead while it is on."""
        quick = self.ahead and self.crawl_s < AHEAD_QUICK_S and time.monotonic() >= self._ahead_paused_until
        if quick and self.breaker.state == "closed":
            return self.slots.size + self.ahead
        return self.slots.size

    def give_back_stale(self, max_wait: float | None = None) -> int:
        """Entries handed to the workers ``max_wait`` (default ``AHEAD_WAIT_S``) ago and still not started
        go back to the stream, for any daemon (no retry counted); read-ahead pauses. Returns how many."""
        max_wait = AHEAD_WAIT_S if max_wait is None else max_wait
        now = time.monotonic()
        with self._waiting_lock:
            if not self._waiting or now - next(iter(self._waiting.values())).started < max_wait:
                return 0
            stale = [r for r in self._waiting.values() if now - r.started >= max_wait]
            for running in stale:
                del self._waiting[running.msg.id]
        self._ahead_paused_until = now + AHEAD_PAUSE_S
        self.crawl_s = max(self.crawl_s, AHEAD_QUICK_S)  # hung crawls never end to say so: quick no more
        for running in stale:
            self.slots.give()
            # a stop that cancelled it meanwhile: acknowledged, as its crawl would have been
            self.writer.submit(
                running, Skip("cancelled") if running.cancel_reason == "stopped" else GIVEN_BACK
            )
        log.warning("gave back %d entries that waited %.1fs or more for a worker (crawls slow or hung, or the "
                    "shutdown); read-ahead paused for %.0fs", len(stale), max_wait, AHEAD_PAUSE_S)  # fmt: skip
        return len(stale)

    def _half_open_check(self) -> bool:
        """Half-open: a health answer decides without spending a task. False: stay out this turn."""
        now = time.monotonic()
        if now < self.next_health:
            return True  # checked a moment ago and it said nothing: the probe task (if any) decides
        self.next_health = now + 1.0
        health = self.crawler.health_status(timeout_s=1.0)
        if health == "SERVING":
            self.breaker.record_success()
        elif health in ("NOT_SERVING", "UNREACHABLE"):
            self.breaker.force_open()  # still down: wait another open period
            return False
        return True

    def _recovered(self, count: int) -> list[StreamMessage]:
        messages = self.consumer.recover(count, held=self.leases.ids())
        self.recover = len(messages) >= count  # there may be more
        if messages:
            self.metrics.recovered.inc(len(messages))
            log.warning(
                "took up %d entries left in this consumer's pending list by a lost reply", len(messages)
            )
        return messages

    def _reclaim(self, count: int) -> list[StreamMessage]:
        self.next_reclaim = time.monotonic() + self.settings.reclaim_interval
        messages = self.consumer.reclaim(int(self.settings.lease_timeout * 1000), count)
        if messages:
            self.metrics.autoclaimed.inc(len(messages))
            log.warning("reclaimed %d entries from stalled consumers", len(messages))
            self.next_reclaim = 0.0  # there may be more: look again next turn
        return messages

    def _advance(
        self, messages: list[StreamMessage], read_more: bool, probe: bool = False
    ) -> list[StreamMessage]:
        """Start the messages in hand (their slots reserved) and, in the same round-trip, read the next
        batch for the slots still free: under load the read loop costs one round-trip per batch.
        Returns the next batch, its slots reserved. On an error nothing is started twice: what was not
        handed on stays pending, and the next turn recovers it."""
        messages, held = self.leases.split(messages)  # an entry already held is never started twice
        for _ in held:
            self.slots.give()
        reading = read_more and not self._stopping.is_set() and not self.consumer.resuming
        more = self._free() if reading and self.breaker.state == "closed" else 0
        try:
            specs, verdicts, locked_ms, next_reply = self._classify(messages, more)
        except BaseException:
            for _ in messages:
                self.slots.give()
            self.recover = True
            raise
        self._dispatch(messages, specs, verdicts, locked_ms, probe)
        if not more:
            return []
        try:
            upcoming = self.consumer.accept(next_reply)
        except BaseException:
            self.recover = True
            raise
        self.slots.take(len(upcoming))
        return upcoming

    def _classify(
        self, messages: list[StreamMessage], read_next: int = 0
    ) -> tuple[dict[int, TaskSpec | None], dict[str, Verdict], int, object]:
        """Specs and run locks of a whole batch, and optionally a non-blocking read of the next batch, in
        one round-trip. Returns (specs, verdicts, Redis time of the locks in ms, the next read's reply)."""
        executes = [m for m in messages if m.message.action == "execute"]
        if not executes and not read_next:
            return {}, {}, 0, None
        ids = sorted({m.message.task_id for m in executes})
        requests = [
            RunRequest(m.message.task_id, m.id, m.message.requested_at(m.id), m.message.retry,
                       m.message.source == "user_create")
            for m in executes
        ]  # fmt: skip

        def build(pipe: redis.Redis) -> None:
            self.registry.queue_get_many(pipe, ids)
            if requests:
                self.lifecycle.lock_runs(requests, self.consumer.name, pipe)  # safe to run twice
            if read_next:
                self.consumer.queue_read(pipe, read_next)

        with connection_errors("read specs and take run locks"):
            replies = self.consumer.scripts.execute(build, raise_on_error=False)
        next_reply = replies.pop() if read_next else None
        if isinstance(next_reply, redis.ResponseError):  # NOGROUP after a flush: the next plain read fixes it
            log.warning("read of the next batch failed (%s)", next_reply)
            next_reply = None
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply  # the next read's entries, if any, are recovered next turn
        locked_ms, verdicts = Lifecycle.verdicts(replies.pop()) if requests else (0, [])
        specs = self.registry.parse_many(ids, replies)
        return specs, {m.id: v for m, v in zip(executes, verdicts, strict=True)}, locked_ms, next_reply

    def _dispatch(
        self,
        messages: list[StreamMessage],
        specs: dict[int, TaskSpec | None],
        verdicts: dict[str, Verdict],
        locked_ms: int,
        probe: bool,
    ) -> None:
        """Hand each message on: to a worker (a crawl), to the stops thread, or straight to the writer
        (skips and duplicates). No Redis call here, so nothing can fail half-way through a batch. Every
        entry of the batch is held before any is handed on: a stop that runs at once on its own thread
        finds the batch's crawls of its task, retries of older requests among them, there to cancel."""
        assert self.workers is not None and self.stops is not None
        started: list[tuple[Running, TaskSpec | None]] = []
        for msg in messages:
            spec = specs.get(msg.message.task_id)
            outcome = route(msg, spec, verdicts.get(msg.id), self.registry.owns_status)
            running = Running(msg, probe=probe, started_ms=locked_ms)
            if isinstance(outcome, LeavePending):  # no longer pending to this consumer: not ours to end
                self.slots.give()
                continue
            self.leases.add(running)
            if outcome is not None:
                self.slots.give()
                self.writer.submit(running, outcome)
                continue
            if verdicts.get(msg.id) == "healed":
                self.metrics.run_locks_healed.inc()
                log.warning("run lock of task %d named no live run: taken over", msg.message.task_id)
            started.append((running, spec))
        for running, spec in started:
            if running.msg.message.action == "stop":
                # a thread of its own: a stop never waits behind crawls, hung ones included. It takes no
                # worker, so no slot (held, it counts against the reads like an outcome the writer owes),
                # and it is never given back: re-added behind the backlog it would only come later
                self.slots.give()
                try:
                    self.stops.submit(self._work, running, spec, False)
                except RuntimeError:  # the pool is shut down: left pending for a restart
                    self.leases.forget(running)
                continue
            with self._waiting_lock:
                self._waiting[running.msg.id] = running
            try:
                self.workers.submit(self._start, running, spec)
            except RuntimeError:  # the pool is shut down: left pending for a restart
                if self._claim(running):
                    self.slots.give()
                    self.leases.forget(running)

    def _claim(self, running: Running) -> bool:
        """Take this very hold out of the waiting ones: True for exactly one caller, the worker that
        starts it or the give-back (a hold given back and still queued never takes a later hold of the
        same entry: recovered after a failed write, or reclaimed back)."""
        with self._waiting_lock:
            if self._waiting.get(running.msg.id) is not running:
                return False
            del self._waiting[running.msg.id]
            return True

    def _start(self, running: Running, spec: TaskSpec | None) -> None:
        if not self._claim(running):
            return  # given back before a worker came to it: not this worker's any more
        began = time.monotonic()
        self._work(running, spec)
        if running.fetched:  # a crawl went out (not a skip, a give-back, a database failure before it)
            self.crawl_s += (time.monotonic() - began - self.crawl_s) / 8  # a lost update only blurs it

    def _work(self, running: Running, spec: TaskSpec | None, worker: bool = True) -> None:
        """``worker``: on a crawl worker, holding a slot (False: a stop on its own thread)."""
        outcome: Outcome = LeavePending("worker error")
        if worker:
            self.metrics.workers_busy.inc()
        try:
            outcome = self.runner.run(running, spec)
        except (QueueConnectionError, redis.RedisError) as exc:  # a stop or re-enable not written
            self.metrics.redis_errors.labels("outcome").inc()
            log.warning("Redis error (%s); entry left pending", exc, extra={"entry_id": running.msg.id})
            outcome = LeavePending("Redis error", recover=True)
        except Exception:
            # left pending, not recovered at once (a bug would loop): a restart or a reclaim takes it up,
            # and the delivery cap ends a crash loop
            log.exception("worker error; entry left pending", extra={"entry_id": running.msg.id})
        finally:
            # The worker is free at once: crawls never wait for the writer. The entry stays held (lease
            # renewed) until the writer has ended it.
            if worker:
                self.metrics.workers_busy.dec()
                self.slots.give()
            self.writer.submit(running, outcome)

    def start_batch_in_hand(self) -> None:
        """Entries already read when the stop came are started like any in-flight work (or, if Redis is
        gone, left pending for a restart or a reclaim)."""
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        try:
            self._advance(batch, read_more=False)
        except Exception as exc:  # _advance has given their slots back already
            log.warning("%d entries read before the stop left pending (%s)", len(batch), exc)
