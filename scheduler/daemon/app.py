"""The scheduler daemon: consumer group → worker pool → crawler gRPC → ack / requeue / dead-letter.

This module is the wiring and the order of start and shutdown; the work is elsewhere in this package. The
main thread runs the read loop (``intake``). Workers run crawls to outcome values (``runner``); every
ending goes through one writer (``outcomes``: one ``end.lua`` call per batch). Threads beside them:
``leases`` renews the leases of held entries and cancels crawls of stopped tasks, ``control`` hears stops
from other daemons, ``maintenance`` runs the shared timers, ``task store`` the database's jobs when
``app.task_store = mysql``. Lifecycle: ``Daemon(settings)`` stores; ``start()`` connects; ``run()`` loops
until ``request_stop()`` (or SIGTERM/SIGINT with ``handle_signals``), then drains within
``shutdown_grace`` while leases are still renewed, and closes within ``AFTER_GRACE_S`` more. A second
signal forces: crawls are cancelled and left pending.

(Over 300 lines on purpose: the wiring and the shutdown order read best as one sequence in one file.)
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scheduler.config.settings import AFTER_GRACE_S, Settings
from scheduler.crawler.breaker import CircuitBreaker
from scheduler.crawler.client import CrawlerClient
from scheduler.daemon.datapath import DataPath
from scheduler.daemon.intake import BLOCK_MS, Intake
from scheduler.daemon.leases import Leases
from scheduler.daemon.maintenance import Maintenance
from scheduler.daemon.outcomes import Outcomes
from scheduler.daemon.runner import TaskRunner
from scheduler.daemon.slots import Slots
from scheduler.daemon.timers import Job, TimerThread
from scheduler.daemon.workers import WorkerPool
from scheduler.errors import QueueConnectionError
from scheduler.metrics import Metrics
from scheduler.signals import Signals
from scheduler.taskqueue import Consumer
from scheduler.taskqueue.endings import Limits
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.mysql_store import StoreError
from scheduler.web.status import Health, StatusServer

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        crawler: CrawlerClient | None = None,
        metrics: Metrics | None = None,
        handle_signals: bool = True,
        status_socket: socket.socket | None = None,
    ) -> None:
        """``status_socket``: serve the status endpoints on this listening socket (a supervisor's, which
        keeps it across restarts, ``run --processes``) instead of ``app.metrics_port``."""
        self.settings = s = settings
        self.status_socket = status_socket
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
        # app.task_store = mysql: GoodsHunter's tables are the task store and what a crawl writes
        self.data = DataPath(s, self.redis, self.metrics) if s.task_store == "mysql" else None
        self.lifecycle = Lifecycle(s, self.redis, registry=self.data.store if self.data else None)
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
            count_dead_letter=self._dead_lettered,
        )
        self.slots = Slots(s.worker_pool_size)
        self.handle_signals = handle_signals
        self.leases = Leases(self.consumer, self.metrics, self.registry)
        self._stopping = threading.Event()  # stop reading (and the maintenance timers)
        self._forced = threading.Event()  # give up the drain: cancel crawls, stop retrying writes
        self._halt = threading.Event()  # after the drain: stop renewing leases, stop hearing stops
        self.writer = Outcomes(s, self.consumer, self.metrics, self.leases, give_up=self._forced)
        self.runner = TaskRunner(s, self.crawler, self.breaker, self.metrics, self.lifecycle,
                                 self.data.results if self.data else None)  # fmt: skip
        self.intake = Intake(s, self.consumer, self.lifecycle, self.leases, self.slots, self.writer, self.runner,
                             self.crawler, self.breaker, self.metrics, self._stopping)  # fmt: skip
        self.maintenance = Maintenance(
            s,
            self.consumer,
            self.lifecycle,
            self.crawler,
            self.breaker,
            self.metrics,
            lambda: min(self.slots.busy, s.worker_pool_size),  # entries read ahead wait, not work
        )
        self._workers: WorkerPool | None = None
        self._stops: WorkerPool | None = None
        self._timers: list[TimerThread] = []
        self._maintenance_timer: TimerThread | None = None
        self._control: threading.Thread | None = None
        self._http: StatusServer | None = None
        self._redis_failures = 0
        self._store_failures = 0
        self.last_loop = time.monotonic()  # /healthz: the loop is turning
        self.started = threading.Event()
        self.health = Health(s, lambda: self.last_loop, self._stopping.is_set, self.breaker, self.crawler)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        from scheduler.daemon.startup import StartupError, prepare

        refused = self.data.check() if self.data else None
        if refused:  # a wrong MySQL password or database: one line, exit 1, nothing started
            raise StartupError(refused)

        http_tried: list[bool] = []

        def waiting() -> None:  # Redis not up yet: meanwhile /healthz says live, /readyz not ready
            self.last_loop = time.monotonic()
            if self._serves_status and not http_tried:
                http_tried.append(True)
                self._http = self._status_server().start_or_warn()

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
        self._workers = WorkerPool(s.worker_pool_size)
        self._stops = WorkerPool(1, name="stops")
        self.intake.workers, self.intake.stops = self._workers, self._stops
        self.writer.start()
        self.metrics.workers.set(s.worker_pool_size)
        self.metrics.set_circuit(self.breaker.state)
        renewal = Job("lease renewal", lambda: s.lease_renew_interval, self.leases.renew)
        self._maintenance_timer = TimerThread("maintenance", self.maintenance.jobs(), self._stopping)
        self._timers = [
            TimerThread("leases", [renewal], self._halt),
            self._maintenance_timer,
        ]
        if self.data:  # the database's work on its own timer: a slow query never delays leases or heartbeats
            stops = Job("stopped-row backstop", lambda: s.lease_renew_interval, self.leases.cancel_stopped)
            self._timers.append(TimerThread("task store", self.data.jobs(), self._stopping))
            # through the drain, as the leases: a row stopped during the grace period still ends its crawl
            self._timers.append(TimerThread("task store stops", [stops], self._halt))
            self.data.start(self._halt)
        for timer in self._timers:
            timer.start()
        self._control = threading.Thread(
            target=self.leases.listen, args=(self._halt,), name="control", daemon=True
        )
        self._control.start()
        if self._serves_status and not http_tried:
            # a port already taken is one warning naming app.metrics_port, and the daemon works on
            self._http = self._status_server().start_or_warn()
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

    def _dead_lettered(self, category: str) -> None:
        self.metrics.dead_letters.labels(category).inc()
        if category == "payload_lost" and self._maintenance_timer is not None:
            # a payload-lost entry has no task to find its run lock by: sweep now, not in 30 s
            self._maintenance_timer.run_soon(self.maintenance.sweep_job)

    @property
    def _serves_status(self) -> bool:
        return bool(self.settings.metrics_port or self.status_socket)

    def _status_server(self) -> StatusServer:
        s = self.settings
        return StatusServer(s.metrics_host, s.metrics_port, live=self.health.live, ready=self.health.ready,
                            registry=self.metrics.registry, sock=self.status_socket)  # fmt: skip

    def run(self) -> int:
        """Start, loop until asked to stop, drain, close. Returns the process exit code (0)."""
        signals = Signals(self._on_signal)
        if self.handle_signals:
            signals.install()
        try:
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
        finally:
            signals.restore()  # the previous handlers come back (tests and embedding code)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, force: bool = False) -> None:
        """Safe from a signal handler: only sets events; the main thread acts on them."""
        if force:
            self._forced.set()
        self._stopping.set()

    def _on_signal(self, name: str, forced: bool) -> None:
        log.warning("signal %s: %s", name, "forcing shutdown" if forced else "stopping (again to force)")
        self.request_stop(force=forced)

    def _shutdown(self) -> None:
        """One deadline for everything: the drain until ``shutdown_grace``, then every closing step shares
        the AFTER_GRACE_S that follow (no fixed waits that add up), so the process is gone by grace + 5 s
        even with Redis unreachable. The manifests' termination grace periods are derived from this."""
        end = self._drain()

        def left() -> float:
            return max(0.0, end - time.monotonic())

        self.writer.close(min(2.0, left()))
        self._halt.set()
        for timer in self._timers:
            timer.join(min(1.0, left()))
        if self._control is not None:
            self._control.join(min(1.0, left()))
        for pool in (self._workers, self._stops):
            if pool:
                pool.shutdown()
        if self._http is not None:
            self._http.stop(min(1.0, left()))
        self.health.close()
        self.crawler.close()
        if self.data:
            self.data.close(min(1.5, left()))
        if left() > 0:
            self.maintenance.clear_heartbeat()  # best effort: it expires by itself
        self.redis.close()
        log.info("daemon stopped", extra={"consumer": self.settings.consumer_name})

    def _drain(self) -> float:
        """Stop reading; wait for the crawls in flight and their outcomes until ``shutdown_grace`` (or a
        forced stop), then cancel what still runs. Returns the monotonic time by which the rest of the
        shutdown must be done."""
        self._stopping.set()
        self.intake.start_batch_in_hand()
        grace = self.settings.shutdown_grace
        if self.slots.busy:
            log.info("draining %d in-flight tasks (grace %.0fs)", self.slots.busy, grace)
        deadline = time.monotonic() + grace
        end = deadline + AFTER_GRACE_S
        while self.slots.busy or self.leases:  # crawls running, or outcomes not yet written
            if self.slots.busy:
                self.slots.wait_idle(0.2)
            else:
                time.sleep(0.01)
            self.intake.give_back_stale()  # read ahead behind crawls that do not end: another daemon's
            if not (self.slots.busy or self.leases):
                break
            if self._forced.is_set() or time.monotonic() >= deadline:
                self._forced.set()  # writes stop retrying too: nothing may outlast the grace period
                end = min(end, time.monotonic() + AFTER_GRACE_S)
                self.intake.give_back_stale(max_wait=0)  # not started: back to the stream, not cancelled
                left_pending = self.leases.cancel_all("shutdown")
                log.warning("grace period over: %d crawls cancelled and left pending", left_pending)
                self.slots.wait_idle(min(2.0, max(0.0, end - time.monotonic())))
                break
        return end

    # -- the read loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.last_loop = time.monotonic()
            try:
                self.intake.turn()
                if self._redis_failures:
                    log.info("Redis reachable again after %d failed attempts", self._redis_failures)
                    self._redis_failures = 0
                if self._store_failures:
                    log.info("task database reachable again after %d failed attempts", self._store_failures)
                    self._store_failures = 0
            except (
                QueueConnectionError,
                redis.ConnectionError,
                redis.TimeoutError,
                redis.ResponseError,
            ) as exc:
                self._redis_down(exc)
            except StoreError as exc:  # the task database (MySQL): the batch stays pending, recovered later
                self._store_down(exc)
            except Exception:
                log.exception("read loop error; continuing")
                self.intake.recover = True
                self._stopping.wait(1.0)

    def _store_down(self, exc: StoreError) -> None:
        self._store_failures += 1
        self.metrics.store_errors.inc()
        self._back_off(self._store_failures, "task database error", exc)

    def _redis_down(self, exc: Exception) -> None:
        self._redis_failures += 1
        self.metrics.redis_errors.labels("read").inc()
        self._back_off(self._redis_failures, "Redis error", exc)

    def _back_off(self, failures: int, what: str, exc: Exception) -> None:
        """One line per outage (then every tenth failure) and a growing, jittered pause; a batch whose
        reply was lost or that failed half-way may have left entries to us: recovered next turn."""
        self.intake.recover = True
        delay = min(5.0, 0.1 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
        if failures == 1 or failures % 10 == 0:
            log.warning("%s in read loop (%s); retrying in %.1fs", what, exc, delay)
        self._stopping.wait(delay)
