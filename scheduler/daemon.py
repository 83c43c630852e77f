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
from redis.backoff import NoBackoff
from redis.retry import Retry

from scheduler.breaker import CircuitBreaker
from scheduler.config import Settings
from scheduler.crawler import CrawlerClient
from scheduler.errors import QueueConnectionError
from scheduler.holdings import Holdings
from scheduler.lifecycle import Lifecycle, RunRequest, Verdict
from scheduler.maintenance import Maintenance
from scheduler.metrics import Metrics
from scheduler.outcomes import LeavePending, Outcome, Outcomes, Skip
from scheduler.registry import TaskSpec
from scheduler.taskqueue import Consumer, StreamMessage
from scheduler.taskqueue._redis import connection_errors
from scheduler.taskqueue.endings import Limits
from scheduler.timers import Job, TimerThread
from scheduler.worker import Running, Slots, TaskRunner

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
        # No transparent retries: redis-py would re-send a command whose reply was lost, and a read or a
        # reclaim sent twice strands the first reply's entries. Every caller handles the error itself
        # (docs/ARCHITECTURE.md lists, per Redis call, how).
        self.redis = redis_client or s.redis_client(
            client_name=f"goodshunter-scheduler:{s.consumer_name}",
            socket_timeout=BLOCK_MS / 1000 + 4,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
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
        self.lifecycle = Lifecycle(s, self.redis)
        self.registry = self.lifecycle.registry
        self.consumer = Consumer(
            self.redis,
            None,
            s.task_queue_stream,
            s.task_queue_group,
            s.consumer_name,
            max_entry_bytes=s.max_entry_bytes,
            max_deliveries=s.max_deliveries,
            limits=Limits(
                receipt_ttl_ms=int(max(120.0, 4 * s.lease_timeout) * 1000),
                seen_ttl_ms=int(s.seen_ttl * 1000),
                seen_items_per_task=s.seen_items_per_task,
                results_maxlen=s.results_maxlen,
                dlq_maxlen=s.dlq_maxlen,
                lock_ttl_ms=self.lifecycle.lock_ttl_ms,
            ),
            count_dead_letter=lambda category: self.metrics.dead_letters.labels(category).inc(),
        )
        self.slots = Slots(s.worker_pool_size)
        self.handle_signals = handle_signals
        self.holdings = Holdings(self.consumer, self.metrics, self.registry)
        self._stopping = threading.Event()  # stop reading (and the maintenance timers)
        self._forced = threading.Event()  # give up the drain: cancel crawls, stop retrying writes
        self._halt = threading.Event()  # after the drain: stop renewing leases, stop hearing stops
        self.writer = Outcomes(s, self.consumer, self.metrics, self.holdings, give_up=self._forced)
        self.runner = TaskRunner(s, self.crawler, self.breaker, self.metrics, self.lifecycle)
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
        # A read, reclaim or batch whose reply was lost or dropped may have left entries in this consumer's
        # pending list that no thread holds: take them up before reading on.
        self._recover = False
        self.last_loop = time.monotonic()  # /healthz: the loop is turning
        self.started = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        from scheduler.http import StatusServer
        from scheduler.startup import prepare

        http_tried: list[bool] = []

        def waiting() -> None:  # Redis not up yet: meanwhile /healthz says live, /readyz not ready
            self.last_loop = time.monotonic()
            if s.metrics_port and not http_tried:
                http_tried.append(True)
                self._http = StatusServer(self, s.metrics_host, s.metrics_port).start_or_warn()

        # Before any work: Redis answers (waited for), takes the password and ACL (StartupError if not),
        # the Lua scripts are loaded, and the consumer name is ours (StartupError while a live daemon
        # holds it). None: a stop came while waiting; nothing was started.
        try:
            claim = prepare(
                s, self.redis, self._stopping, preload=self.consumer.scripts.load, waiting=waiting
            )
        except BaseException:
            if self._http is not None:
                self._http.stop()  # refused or failed: nothing stays behind
            raise
        if claim is None:  # a stop came while waiting: nothing else was started
            if self._http is not None:
                self._http.stop()
            return
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
        if s.metrics_port and not http_tried:
            # a port already taken is one warning naming app.metrics_port, and the daemon works on
            self._http = StatusServer(self, s.metrics_host, s.metrics_port).start_or_warn()
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
        try:
            self.start()
        except BaseException:
            self.redis.close()
            raise
        if not self.started.is_set():  # stopped while waiting for Redis
            self.redis.close()
            return 0
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
                self._recover = True
                self._stopping.wait(1.0)

    def _turn(self) -> None:
        if self._batch:  # read in the previous round-trip, slots reserved: start it, read on
            batch, self._batch = self._batch, []  # out of hand first: whatever fails, never started twice
            self._batch = self._advance(batch, read_more=True)
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
            self._recover = True
        if self._recover and not self.consumer.resuming:
            messages = self._recovered(free)
        # own pending entries come back through the resume read, never through reclaim
        if not messages and not self.consumer.resuming and time.monotonic() >= self._next_reclaim:
            messages = self._reclaim(free)
        if not messages:
            messages = self.consumer.read(free, block_ms=BLOCK_MS)
        if messages:
            self.slots.take(len(messages))
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

    def _recovered(self, count: int) -> list[StreamMessage]:
        messages = self.consumer.recover(count, held=self.holdings.ids())
        self._recover = len(messages) >= count  # there may be more
        if messages:
            self.metrics.recovered.inc(len(messages))
            log.warning(
                "took up %d entries left in this consumer's pending list by a lost reply", len(messages)
            )
        return messages

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
        Returns the next batch, its slots reserved. On an error nothing is started twice: what was not
        handed on stays pending, and the next turn recovers it."""
        messages, held = self.holdings.split(messages)  # an entry already held is never started twice
        for _ in held:
            self.slots.give()
        reading = read_more and not self._stopping.is_set() and not self.consumer.resuming
        more = self._free() if reading and self.breaker.state == "closed" else 0
        try:
            specs, verdicts, locked_ms, next_reply = self._classify(messages, more)
        except BaseException:
            for _ in messages:
                self.slots.give()
            self._recover = True
            raise
        self._dispatch(messages, specs, verdicts, locked_ms, probe)
        if not more:
            return []
        try:
            upcoming = self.consumer.accept(next_reply)
        except BaseException:
            self._recover = True
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
            RunRequest(m.message.task_id, m.id, m.message.requested_ms(m.id), m.message.retry,
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
        """Hand each message on: to a worker (a crawl or a stop), or straight to the writer (skips and
        duplicates). No Redis call here, so nothing can fail half-way through a batch."""
        assert self._executor is not None
        for msg in messages:
            spec = specs.get(msg.message.task_id)
            outcome = _route(msg, spec, verdicts.get(msg.id))
            running = Running(msg, probe=probe, started_ms=locked_ms)
            if isinstance(outcome, LeavePending):  # no longer pending to this consumer: not ours to end
                self.slots.give()
                continue
            self.holdings.add(running)
            if outcome is not None:
                self.slots.give()
                self.writer.submit(running, outcome)
                continue
            if verdicts.get(msg.id) == "healed":
                self.metrics.run_locks_healed.inc()
                log.warning("run lock of task %d named no live run: taken over", msg.message.task_id)
            self.metrics.workers_busy.inc()
            try:
                self._executor.submit(self._work, running, spec)
            except RuntimeError:  # the pool is shut down: left pending for a restart
                self.metrics.workers_busy.dec()
                self.slots.give()
                self.holdings.forget(running)

    def _work(self, running: Running, spec: TaskSpec | None) -> None:
        outcome: Outcome = LeavePending("worker error")
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
            self.metrics.workers_busy.dec()
            self.slots.give()
            self.writer.submit(running, outcome)

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
        self._recover = True  # a read whose reply was lost may have delivered entries to us
        self.metrics.redis_errors.labels("read").inc()
        delay = min(5.0, 0.1 * 2 ** min(self._redis_failures, 6)) * random.uniform(0.5, 1.0)
        if self._redis_failures == 1 or self._redis_failures % 10 == 0:
            log.warning("Redis error in read loop (%s); retrying in %.1fs", exc, delay)
        self._stopping.wait(delay)


def _route(msg: StreamMessage, spec: TaskSpec | None, verdict: Verdict | None) -> Outcome | None:
    """What the read loop does with a message: None hands it to a worker (a crawl, or a stop)."""
    if msg.message.action == "stop":
        return None
    if verdict == "gone":
        return LeavePending("no longer pending to this consumer")
    if spec is None:
        return Skip("skipped")
    if spec.status == "stopped" and not _restarts(msg, spec):
        return Skip("skipped")
    if verdict in ("duplicate", "satisfied"):
        return Skip("duplicate")
    return None


def _restarts(msg: StreamMessage, spec: TaskSpec) -> bool:
    """A user's execute made after the task was stopped starts it again (a re-enabled task). One made
    before the stop (a retry keeps its first request's time), or a replayed dead letter of an older
    request, does not. Both times are Redis' clock."""
    task = msg.message
    if task.source != "user_create" or (task.retry and not task.origin):  # a retry of unknown age: no
        return False
    return task.requested_ms(msg.id) > max(spec.status_ms, int(spec.updated_at * 1000))
