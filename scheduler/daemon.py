"""The scheduler daemon: consumer group → worker pool → crawler gRPC → ack / requeue / dead-letter.

The main thread runs the read loop. It reads only as many entries as there are free workers (no queue of
claimed-but-unstarted work that a crash or a reclaim would duplicate), blocks in XREADGROUP (so a new
task starts within milliseconds), and stops reading while the crawler's circuit is open. Each batch is
classified in one round-trip (specs and run claims): skips and duplicates are acknowledged at once, only
real crawls reach the workers. Successes are recorded in batches by the OutcomeWriter.

Threads beside it: ``leases`` renews the leases of held entries and cancels crawls of stopped tasks,
``control`` hears stops from other daemons, ``maintenance`` runs the shared timers, ``outcomes`` records
successes. Lifecycle: ``Daemon(settings)`` stores; ``start()`` connects; ``run()`` loops until
``request_stop()`` (or SIGTERM/SIGINT with ``handle_signals``), then drains within ``shutdown_grace`` while
leases are still renewed, and closes. A second signal forces: crawls are cancelled and left pending.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING

import redis

from scheduler.breaker import CircuitBreaker
from scheduler.config import Settings
from scheduler.crawler import CrawlerClient
from scheduler.errors import InvalidMessageError, QueueConnectionError
from scheduler.holdings import Holdings
from scheduler.lifecycle import Lifecycle
from scheduler.maintenance import Maintenance
from scheduler.metrics import Metrics
from scheduler.outcomes import OutcomeWriter
from scheduler.registry import TaskSpec
from scheduler.taskqueue import Consumer, StreamMessage, keys
from scheduler.taskqueue._redis import connection_errors, text
from scheduler.taskqueue.message import decode
from scheduler.timers import Job, TimerThread
from scheduler.worker import HANDED, Running, Slots, TaskRunner

if TYPE_CHECKING:
    from scheduler.http import StatusServer

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # XREADGROUP BLOCK: bounds how long a stop request waits for the read loop


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        crawler: CrawlerClient | None = None,
        metrics: Metrics | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.settings = s = settings
        # A socket timeout a few seconds past the read's BLOCK: a Redis that vanishes without closing
        # connections is noticed in seconds, well inside the 30 s liveness window, not after minutes.
        self.redis = redis_client or s.redis_client(
            client_name=f"goodshunter-scheduler:{s.consumer_name}",
            socket_timeout=BLOCK_MS / 1000 + 4,
            socket_keepalive=True,
        )
        self.metrics = metrics or Metrics()
        self.crawler = crawler or CrawlerClient(
            s.crawler_grpc_addr,
            deadline_s=s.crawler_deadline,
            attempts=s.crawler_attempts,
            backoff_initial_s=s.crawler_backoff_initial,
            backoff_max_s=s.crawler_backoff_max,
            tls=s.crawler_tls,
            tls_ca_file=s.crawler_tls_ca_file,
            on_call=lambda code, secs: self.metrics.crawler_calls.labels(code).observe(secs),
        )
        self.breaker = CircuitBreaker(
            failure_threshold=s.breaker_failure_threshold,
            open_seconds=s.breaker_open_duration,
            on_change=lambda _old, new: self.metrics.set_circuit(new),  # the breaker logs transitions
        )
        self.consumer = Consumer(
            self.redis,
            None,
            s.task_queue_stream,
            s.task_queue_group,
            s.consumer_name,
            max_entry_bytes=s.max_entry_bytes,
            dlq_maxlen=s.dlq_maxlen,
            max_deliveries=s.max_deliveries,
            on_dead_letter=self._dead_lettered,
        )
        self.lifecycle = Lifecycle(s, self.redis, self.consumer.scripts)
        self.slots = Slots(s.worker_pool_size)
        self.handle_signals = handle_signals
        self.holdings = Holdings(self.consumer, self.metrics)
        self._stopping = threading.Event()  # stop reading (and the maintenance timers)
        self._forced = threading.Event()  # give up the drain: cancel crawls, stop retrying writes
        self._halt = threading.Event()  # after the drain: stop renewing leases, stop hearing stops
        self.writer = OutcomeWriter(s, self.consumer, self.lifecycle, self.metrics, finished=self.holdings.forget,
                                    give_up=self._forced)  # fmt: skip
        self.runner = TaskRunner(s, self.consumer, self.crawler, self.breaker, self.metrics, self.lifecycle,
                                 record=self.writer.submit, on_stop=self.stop_task, give_up=self._forced)  # fmt: skip
        self.maintenance = Maintenance(
            s,
            self.consumer,
            self.lifecycle,
            self.crawler,
            self.breaker,
            self.metrics,
            lambda: self.slots.busy,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._timers: list[TimerThread] = []
        self._control: threading.Thread | None = None
        self._http: StatusServer | None = None
        self._next_reclaim = 0.0
        self._next_health = 0.0
        self._redis_failures = 0
        self._batch: list[StreamMessage] = []  # read, slots reserved, not yet started
        self.last_loop = time.monotonic()  # /healthz: the loop is turning
        self.started = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        try:
            self.consumer.scripts.load()  # so the first batch does not meet NOSCRIPT
        except redis.RedisError as exc:
            log.warning("could not load the Lua scripts yet (%s); they load on first use", exc)
        self.crawler.start()
        self._executor = ThreadPoolExecutor(s.worker_pool_size, thread_name_prefix="worker")
        self.writer.start()
        self.metrics.workers.set(s.worker_pool_size)
        self.metrics.set_circuit(self.breaker.state)
        leases = Job("lease renewal", lambda: s.lease_renew_interval, self.holdings.renew)
        self._timers = [
            TimerThread("leases", [leases], self._halt),
            TimerThread("maintenance", self.maintenance.jobs(), self._stopping),
        ]
        for timer in self._timers:
            timer.start()
        self._control = threading.Thread(
            target=self.holdings.listen, args=(self._halt,), name="control", daemon=True
        )
        self._control.start()
        if s.metrics_port:
            from scheduler.http import StatusServer

            self._http = StatusServer(self, s.metrics_host, s.metrics_port).start()
        log.info(
            "daemon started",
            extra={
                "consumer": s.consumer_name,
                "stream": s.task_queue_stream,
                "group": s.task_queue_group,
                "workers": s.worker_pool_size,
                "crawler": s.crawler_grpc_addr,
                "redis": s.redis_target(),
            },
        )
        self.started.set()

    def run(self) -> int:
        """Start, loop until asked to stop, drain, close. Returns the process exit code (0)."""
        if self.handle_signals:
            self._install_signal_handlers()
        self.start()
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, force: bool = False) -> None:
        """Safe from a signal handler: only sets events; the main thread acts on them."""
        if force:
            self._forced.set()
        self._stopping.set()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            forced = self._stopping.is_set()
            log.warning(
                "signal %s: %s",
                signal.Signals(signum).name,
                "forcing shutdown" if forced else "stopping (again to force)",
            )
            self.request_stop(force=forced)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _shutdown(self) -> None:
        self._stopping.set()
        self._start_batch_in_hand()
        grace = self.settings.shutdown_grace
        if self.slots.busy:
            log.info("draining %d in-flight tasks (grace %.0fs)", self.slots.busy, grace)
        deadline = time.monotonic() + grace
        while self.slots.busy or self.holdings:  # crawls running, or successes not yet recorded
            if self.slots.busy:
                self.slots.wait_idle(0.2)
            else:
                time.sleep(0.01)
            if not (self.slots.busy or self.holdings):
                break
            if self._forced.is_set() or time.monotonic() >= deadline:
                self._forced.set()  # writes stop retrying too: nothing may outlast the grace period
                left = self.holdings.cancel_all("shutdown")
                log.warning("grace period over: %d crawls cancelled and left pending", left)
                self.slots.wait_idle(5.0)
                break
        self.writer.close(5.0)
        self._halt.set()
        for timer in self._timers:
            timer.join(2.0)
        if self._control is not None:
            self._control.join(2.0)
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.stop()
        self.crawler.close()
        self.maintenance.clear_heartbeat()
        self.redis.close()
        log.info("daemon stopped", extra={"consumer": self.settings.consumer_name})

    # -- the read loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.last_loop = time.monotonic()
            try:
                self._turn()
                if self._redis_failures:
                    log.info("Redis reachable again after %d failed attempts", self._redis_failures)
                    self._redis_failures = 0
            except (
                QueueConnectionError,
                redis.ConnectionError,
                redis.TimeoutError,
                redis.ResponseError,
            ) as exc:
                self._redis_down(exc)
            except Exception:
                log.exception("read loop error; continuing")
                self._stopping.wait(1.0)

    def _turn(self) -> None:
        if self._batch:  # read in the previous round-trip, slots reserved: handle it, read on
            self._batch = self._advance(self._batch, read_more=True)
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
        # own pending entries come back through the resume read, never through reclaim
        if not self.consumer.resuming and time.monotonic() >= self._next_reclaim:
            messages = self._reclaim(free)
        if not messages:
            messages = self.consumer.read(free, block_ms=BLOCK_MS)
        if messages:
            self.slots.take(len(messages))
            self._batch = messages  # kept in hand if the round-trip below fails: retried next turn
            self._batch = self._advance(messages, read_more=not probe, probe=probe)

    def _free(self, wait: float = 0.0) -> int:
        """Worker slots free now; entries held but not yet recorded count too (at most a pool's worth may
        wait for the writer)."""
        free = self.slots.wait_free(timeout=wait) if wait else self.slots.size - self.slots.busy
        return min(free, 2 * self.slots.size - len(self.holdings))

    def _half_open_check(self) -> bool:
        """Half-open: a health answer decides without spending a task. False: stay out this turn."""
        now = time.monotonic()
        if now < self._next_health:
            return True  # checked a moment ago and it said nothing: the probe task (if any) decides
        self._next_health = now + 1.0
        health = self.crawler.health_status(timeout_s=1.0)
        if health == "SERVING":
            self.breaker.record_success()
        elif health in ("NOT_SERVING", "UNREACHABLE"):
            self.breaker.force_open()  # still down: wait another open period
            return False
        return True

    def _reclaim(self, count: int) -> list[StreamMessage]:
        self._next_reclaim = time.monotonic() + self.settings.reclaim_interval
        messages = self.consumer.reclaim(int(self.settings.lease_timeout * 1000), count)
        if messages:
            self.metrics.autoclaimed.inc(len(messages))
            log.warning("reclaimed %d entries from stalled consumers", len(messages))
            self._next_reclaim = 0.0  # there may be more: look again next turn
        return messages

    def _advance(
        self, messages: list[StreamMessage], read_more: bool, probe: bool = False
    ) -> list[StreamMessage]:
        """Start the messages in hand (their slots reserved) and, in the same round-trip, read the next
        batch for the slots still free: under load the read loop costs one round-trip per batch.
        Returns the next batch, its slots reserved."""
        messages, held = self.holdings.split(messages)  # an entry already held is never started twice
        for _ in held:
            self.slots.give()
        reading = read_more and not self._stopping.is_set() and not self.consumer.resuming
        more = self._free() if reading and self.breaker.state == "closed" else 0
        specs, verdicts, next_reply = self._classify(messages, more)
        self._dispatch(messages, specs, verdicts, probe)
        upcoming = self.consumer.accept(next_reply) if more else []
        self.slots.take(len(upcoming))
        return upcoming

    def _dispatch(
        self,
        messages: list[StreamMessage],
        specs: dict[int, TaskSpec | None],
        verdicts: dict[str, str],
        probe: bool,
    ) -> None:
        ended: list[tuple[StreamMessage, str]] = []
        assert self._executor is not None
        for msg in messages:
            spec = specs.get(msg.message.task_id)
            if msg.message.action == "execute":
                if spec is None or (spec.status == "stopped" and not _restarts(msg, spec)):
                    ended.append((msg, "skipped"))
                    continue
                if verdicts[msg.id] != "run":
                    ended.append((msg, "duplicate"))
                    continue
            running = Running(msg, probe=probe)
            self.holdings.add(running)
            self.metrics.workers_busy.inc()
            self._executor.submit(self._work, running, spec)
        for _ in ended:
            self.slots.give()
        if ended:
            self._end_at_once(ended)

    def _classify(
        self, messages: list[StreamMessage], read_next: int = 0
    ) -> tuple[dict[int, TaskSpec | None], dict[str, str], object]:
        """Specs and run claims of a whole batch, and optionally a non-blocking read of the next batch,
        in one round-trip. Returns (specs, verdicts, the next read's raw reply)."""
        executes = [m for m in messages if m.message.action == "execute"]
        if not executes and not read_next:
            return {}, {}, None
        ids = sorted({m.message.task_id for m in executes})
        claims = [(m.message.task_id, m.id, m.message.retry) for m in executes]

        def build(pipe: redis.Redis) -> None:
            for task_id in ids:
                pipe.hgetall(keys.task_spec_key(task_id))
            if claims:
                self.lifecycle.claim_batch(claims, pipe)  # a claim repeated by the same entry is a no-op
            if read_next:
                self.consumer.queue_read(pipe, read_next)

        with connection_errors("read specs and claim runs"):
            replies = self.consumer.scripts.execute(build, raise_on_error=False)
        next_reply = replies.pop() if read_next else None
        if isinstance(next_reply, redis.ResponseError):  # NOGROUP after a flush: the next plain read fixes it
            log.warning("read of the next batch failed (%s)", next_reply)
            next_reply = None
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        verdicts = replies.pop() if claims else []
        raws = replies
        specs: dict[int, TaskSpec | None] = {}
        for task_id, raw in zip(ids, raws, strict=True):
            try:
                specs[task_id] = TaskSpec.from_hash(task_id, raw) if raw else None
            except (ValueError, TypeError) as exc:
                log.error("task %d has an unreadable spec (%s); treated as unknown", task_id, exc)
                specs[task_id] = None
        return specs, {m.id: text(v) for m, v in zip(executes, verdicts, strict=True)}, next_reply

    def _end_at_once(self, ended: list[tuple[StreamMessage, str]]) -> None:
        """Skips (their claim released) and duplicates: acknowledged in one round-trip, counted."""

        def build(pipe: redis.Redis) -> None:
            for msg, label in ended:
                if label == "skipped":
                    self.lifecycle.release(msg.message.task_id, msg.id, None, pipe)
            pipe.xack(self.consumer.stream, self.consumer.group, *(msg.id for msg, _ in ended))

        with connection_errors("acknowledge skipped and duplicate entries"):
            self.consumer.scripts.execute(build)
        for msg, label in ended:
            self.metrics.tasks_processed.labels(label).inc()
            if label == "duplicate":
                self.metrics.duplicates.inc()
            log.info(
                "task %s",
                label,
                extra={"task_id": msg.message.task_id, "entry_id": msg.id, "consumer": self.consumer.name,
                       "outcome": label, "code": label.upper()},
            )  # fmt: skip

    def _work(self, running: Running, spec: TaskSpec | None) -> None:
        label = None
        try:
            label = self.runner.run(running, spec)
        except Exception:
            log.exception("worker error; entry left pending for reclaim", extra={"entry_id": running.msg.id})
        finally:
            # The worker is free at once: crawls never wait for the writer. A success's entry stays held
            # (lease renewed) until the writer has recorded it and calls _forget.
            self.metrics.workers_busy.dec()
            self.slots.give()
            if label != HANDED:
                self.holdings.forget(running)

    def _start_batch_in_hand(self) -> None:
        """Entries already read when the stop came are started like any in-flight work (or, if Redis is
        gone, left pending for a restart or a reclaim)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self._advance(batch, read_more=False)
        except Exception as exc:
            log.warning("%d entries read before the stop left pending (%s)", len(batch), exc)
            for _ in batch:
                self.slots.give()

    def _redis_down(self, exc: Exception) -> None:
        self._redis_failures += 1
        self.metrics.redis_errors.labels("read").inc()
        delay = min(5.0, 0.1 * 2 ** min(self._redis_failures, 6)) * random.uniform(0.5, 1.0)
        if self._redis_failures == 1 or self._redis_failures % 10 == 0:
            log.warning("Redis error in read loop (%s); retrying in %.1fs", exc, delay)
        self._stopping.wait(delay)

    # -- stops ----------------------------------------------------------------------------------------

    def stop_task(self, task_id: int, why: str) -> None:
        """A stop message: stop the task everywhere (the lifecycle tells the other daemons)."""
        self.lifecycle.stop(task_id, who=why)
        self.metrics.stops.inc()
        self.holdings.cancel_task(task_id, "stopped")

    # -- callbacks ----------------------------------------------------------------------------------------

    def _dead_lettered(self, entry_id: str, reason: str, payload: bytes | str) -> None:
        """Dead letters written by the consumer itself (poison, crash loops, lost payloads)."""
        self.metrics.dead_letters.labels(reason.split(":", 1)[0]).inc()
        task_id = _task_id_of(payload)
        if task_id is not None:  # a crash-looping run must not keep its task's marker for an hour
            try:
                self.lifecycle.release(task_id, entry_id, None)
            except redis.RedisError:
                pass  # the marker's TTL is the backstop


def _restarts(msg: StreamMessage, spec: TaskSpec) -> bool:
    """A user's execute made and added after the task was stopped starts it again (a re-enabled task).
    One queued before the stop, or a replayed dead letter of an older request, does not."""
    added = int(msg.id.split("-", 1)[0]) / 1000
    made = msg.message.timestamp.timestamp()
    return msg.message.source == "user_create" and min(added, made) > spec.updated_at


def _task_id_of(payload: bytes | str) -> int | None:
    try:
        return decode(payload).task_id
    except InvalidMessageError:
        return None
