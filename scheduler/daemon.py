"""The scheduler daemon: consumer group → worker pool → crawler gRPC → ack / requeue / dead-letter.

The main thread runs the read loop. It reads only as many entries as there are free workers (no queue of
claimed-but-unstarted work that a crash or a reclaim would duplicate), blocks in XREADGROUP (so a new
task starts within milliseconds), and stops reading while the crawler's circuit is open. Beside it: a
lease thread renews the leases of in-flight entries, a maintenance thread runs the shared timers.

Lifecycle: ``Daemon(settings)`` stores; ``start()`` connects; ``run()`` loops until ``request_stop()``
(or SIGTERM/SIGINT with ``handle_signals``), then drains in-flight crawls within ``shutdown_grace`` and
closes. A second signal forces: in-flight crawls are cancelled and left pending.
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
from scheduler.errors import QueueConnectionError
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.registry import RedisTaskRegistry, TaskSpec
from scheduler.taskqueue import Consumer, StreamMessage, keys
from scheduler.timers import Job, TimerThread, heartbeat_payload
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
            on_change=self._circuit_changed,
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
        self.registry = RedisTaskRegistry(self.redis)
        self.lifecycle = Lifecycle(s, self.redis, self.consumer.scripts)
        self.runner = TaskRunner(
            s,
            self.redis,
            self.consumer,
            self.crawler,
            self.breaker,
            self.metrics,
            self.lifecycle,
            self.stop_task,
        )
        self.slots = Slots(s.worker_pool_size)
        self.handle_signals = handle_signals
        self.running: dict[str, Running] = {}  # entry id → what a worker holds
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._timers: list[TimerThread] = []
        self._control: threading.Thread | None = None
        self._http: StatusServer | None = None
        self._next_reclaim = 0.0
        self._redis_failures = 0
        self.last_loop = time.monotonic()  # /healthz: the loop is turning
        self.started = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.crawler.start()
        self._executor = ThreadPoolExecutor(s.worker_pool_size, thread_name_prefix="worker")
        self.metrics.workers.set(s.worker_pool_size)
        self.metrics.set_circuit(self.breaker.state)
        self._timers = [
            TimerThread("leases", [Job("lease renewal", lambda: s.lease_renew_interval, self._renew_leases)], self._stopping),
            TimerThread("maintenance", self._maintenance_jobs(), self._stopping),
        ]  # fmt: skip
        for timer in self._timers:
            timer.start()
        self._control = threading.Thread(target=self._listen_control, name="control", daemon=True)
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
        if force:
            self._forced.set()
            self._cancel_running("shutdown")
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
        grace = self.settings.shutdown_grace
        busy = self.slots.busy
        if busy:
            log.info("draining %d in-flight tasks (grace %.0fs)", busy, grace)
        deadline = time.monotonic() + grace
        while not self.slots.wait_idle(0.2):
            if self._forced.is_set() or time.monotonic() >= deadline:
                left = self._cancel_running("shutdown")
                log.warning("grace period over: %d crawls cancelled and left pending", left)
                self.slots.wait_idle(5.0)
                break
        for timer in self._timers:
            timer.join(2.0)
        if self._control is not None:
            self._control.join(2.0)
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.stop()
        self.crawler.close()
        try:
            self.redis.delete(self._heartbeat_key())
        except redis.RedisError:
            pass
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
            except (QueueConnectionError, redis.ConnectionError, redis.TimeoutError) as exc:
                self._redis_down(exc)
            except redis.ResponseError as exc:
                self._redis_down(exc)
            except Exception:
                log.exception("read loop error; continuing")
                self._stopping.wait(1.0)

    def _turn(self) -> None:
        free = self.slots.wait_free(timeout=0.5)
        if free <= 0 or self._stopping.is_set():
            return
        if self.breaker.state == "half_open":
            health = self.crawler.health_status(timeout_s=1.0)
            if health == "SERVING":
                self.breaker.record_success()  # close without spending a task on a probe
            elif health in ("NOT_SERVING", "UNREACHABLE"):
                self.breaker.force_open()  # still down: wait another open period
                return
            # "UNKNOWN" (no health service, like the original crawler): one probe task decides
        if not self.breaker.allow():
            self._stopping.wait(0.2)
            return
        if self.breaker.state == "half_open":
            free = 1  # a crawler without a health service: one probe task until it answers again
        messages = self._reclaim(free) if time.monotonic() >= self._next_reclaim else []
        if not messages:
            messages = self.consumer.read(free, block_ms=BLOCK_MS)
        if messages:
            self._dispatch(messages)

    def _reclaim(self, count: int) -> list[StreamMessage]:
        self._next_reclaim = time.monotonic() + self.settings.reclaim_interval
        messages = self.consumer.reclaim(int(self.settings.lease_timeout * 1000), count)
        if messages:
            self.metrics.autoclaimed.inc(len(messages))
            log.warning("reclaimed %d entries from stalled consumers", len(messages))
            self._next_reclaim = 0.0  # there may be more: look again next turn
        return messages

    def _dispatch(self, messages: list[StreamMessage]) -> None:
        specs = self._specs(messages)
        probe = self.breaker.state == "half_open"
        assert self._executor is not None
        for msg in messages:
            running = Running(msg, probe=probe)
            with self._running_lock:
                self.running[msg.id] = running
            self.slots.take()
            self.metrics.workers_busy.inc()
            self._executor.submit(self._work, running, specs.get(msg.message.task_id))

    def _specs(self, messages: list[StreamMessage]) -> dict[int, TaskSpec | None]:
        """All specs of a batch in one round-trip."""
        ids = sorted({m.message.task_id for m in messages if m.message.action == "execute"})
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(keys.task_spec_key(task_id))
        raws = pipe.execute()
        specs: dict[int, TaskSpec | None] = {}
        for task_id, raw in zip(ids, raws, strict=True):
            try:
                specs[task_id] = TaskSpec.from_hash(task_id, raw) if raw else None
            except (ValueError, TypeError) as exc:
                log.error("task %d has an unreadable spec (%s); treated as unknown", task_id, exc)
                specs[task_id] = None
        return specs

    def _work(self, running: Running, spec: TaskSpec | None) -> None:
        try:
            self.runner.run(running, spec)
        except Exception:
            log.exception("worker error; entry left pending for reclaim", extra={"entry_id": running.msg.id})
        finally:
            with self._running_lock:
                self.running.pop(running.msg.id, None)
            self.metrics.workers_busy.dec()
            self.slots.give()

    def _redis_down(self, exc: Exception) -> None:
        self._redis_failures += 1
        self.metrics.redis_errors.labels("read").inc()
        delay = min(5.0, 0.1 * 2 ** min(self._redis_failures, 6)) * random.uniform(0.5, 1.0)
        if self._redis_failures == 1 or self._redis_failures % 10 == 0:
            log.warning("Redis error in read loop (%s); retrying in %.1fs", exc, delay)
        self._stopping.wait(delay)

    # -- stop messages, cancellation ------------------------------------------------------------------

    def stop_task(self, task_id: int, why: str) -> None:
        """A stop message: stop the task everywhere (the lifecycle tells the other daemons)."""
        self.lifecycle.stop(task_id, who=why)
        self.metrics.stops.inc()
        self.cancel_local(task_id)

    def cancel_local(self, task_id: int) -> None:
        """Cancel any crawl of this task that this daemon is running (its outcome: acked, not retried)."""
        with self._running_lock:
            targets = [r for r in self.running.values() if r.msg.message.task_id == task_id]
        for running in targets:
            if running.msg.message.action == "execute":
                running.cancel_reason = "stopped"
                running.token.cancel()

    def _listen_control(self) -> None:
        """Stops published by any daemon or CLI reach this one at once; the lease timer's status check is
        the backstop for a message missed while disconnected."""
        channel = keys.control_channel(self.settings.task_queue_stream)
        failures = 0
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(channel)
                failures = 0
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self._on_control(message["data"])
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("control channel lost (%s); resubscribing", type(exc).__name__)
                self._stopping.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))
            except Exception:
                log.exception("control channel error")
                self._stopping.wait(1.0)
            finally:
                pubsub.close()

    def _on_control(self, data: bytes) -> None:
        verb, _, arg = data.decode("utf-8", "replace").partition(" ")
        if verb == "stop" and arg.isdigit():
            self.cancel_local(int(arg))

    def _cancel_running(self, reason: str) -> int:
        with self._running_lock:
            targets = list(self.running.values())
        for running in targets:
            running.cancel_reason = running.cancel_reason or reason
            running.token.cancel()
        return len(targets)

    # -- timers -------------------------------------------------------------------------------------------

    def _renew_leases(self) -> None:
        with self._running_lock:
            ids = list(self.running)
        if not ids:
            return
        owned = set(self.consumer.extend(ids))
        self.metrics.lease_renewals.inc()
        self._cancel_stopped()
        with self._running_lock:
            lost = [i for i in ids if i not in owned and i in self.running]
        if lost:
            self.metrics.leases_lost.inc(len(lost))
            log.warning("%d in-flight entries were reclaimed by another consumer", len(lost))

    def _cancel_stopped(self) -> None:
        with self._running_lock:
            task_ids = sorted(
                {r.msg.message.task_id for r in self.running.values() if r.cancel_reason is None}
            )
        if not task_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(keys.task_spec_key(task_id), "status")
        for task_id, status in zip(task_ids, pipe.execute(), strict=True):
            if status == b"stopped":
                self.cancel_local(task_id)

    def _maintenance_jobs(self) -> list[Job]:
        s = self.settings
        return [
            Job("delayed-retry mover", lambda: 1.0, self._move_due),
            Job("periodic publisher", lambda: 1.0, self._publish_due),
            Job("heartbeat", lambda: s.heartbeat_interval, self._heartbeat),
            Job("queue gauges", lambda: 5.0, self._refresh_gauges),
            Job("crawler health", lambda: min(5.0, s.breaker_open_duration), self._check_crawler),
            Job("trim", lambda: s.trim_interval, self._trim),
            Job("consumer reaper", lambda: 600.0, self._reap),
        ]

    def _move_due(self) -> float | None:
        moved, next_in = self.consumer.move_due()
        if moved:
            log.debug("moved %d due retries into the stream", moved)
        return next_in

    def _publish_due(self) -> float | None:
        published, skipped, next_in = self.lifecycle.publish_due()
        if published:
            self.metrics.periodic_published.inc(published)
        if skipped:
            self.metrics.periodic_skipped.inc(skipped)
            log.info("%d periodic runs skipped: previous run still queued, retrying or running", skipped)
        return next_in

    def _check_crawler(self) -> None:
        """A crawler that says NOT_SERVING opens the circuit before tasks spend retries finding out.
        No health service (the original crawler) or no answer says nothing here: calls will tell."""
        if self.breaker.state == "closed" and self.crawler.health_status(timeout_s=2.0) == "NOT_SERVING":
            log.warning("crawler health check says NOT_SERVING: opening the circuit")
            self.breaker.force_open()

    def _heartbeat_key(self) -> str:
        s = self.settings
        return keys.heartbeat_key(s.task_queue_stream, s.task_queue_group, s.consumer_name)

    def _heartbeat(self) -> None:
        s = self.settings
        payload = heartbeat_payload(s.consumer_name, self.slots.busy, s.worker_pool_size, self.breaker.state)
        try:
            self.redis.set(self._heartbeat_key(), payload, ex=max(1, int(s.heartbeat_interval * 3)))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueConnectionError(f"heartbeat: {exc}") from exc

    def _refresh_gauges(self) -> None:
        s = self.settings
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xlen(s.task_queue_stream)
            pipe.xinfo_groups(s.task_queue_stream)
            pipe.zcard(keys.delayed_set(s.task_queue_stream))
            pipe.xlen(keys.dlq_stream(s.task_queue_stream))
            length, groups, delayed, dlq = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueConnectionError(f"queue gauges: {exc}") from exc
        for gauge, value in ((self.metrics.queue_length, length), (self.metrics.delayed_retries, delayed),
                             (self.metrics.dlq_length, dlq)):  # fmt: skip
            if isinstance(value, int):
                gauge.set(value)
        for group in groups if isinstance(groups, list) else []:
            if group.get("name") in (s.task_queue_group, s.task_queue_group.encode()):
                self.metrics.queue_pending.set(int(group.get("pending") or 0))
                if group.get("lag") is not None:
                    self.metrics.queue_lag.set(int(group["lag"]))

    def _trim(self) -> None:
        removed = self.consumer.trim(self.settings.stream_maxlen)
        if removed:
            log.info("trimmed %d acknowledged entries", removed)

    def _reap(self) -> None:
        removed = self.consumer.reap_consumers(min_idle_ms=3600_000)
        if removed:
            log.info("removed idle consumers that owned nothing: %s", ", ".join(removed))

    # -- callbacks ----------------------------------------------------------------------------------------

    def _circuit_changed(self, old: str, new: str) -> None:
        self.metrics.set_circuit(new)  # the breaker logs the transition itself

    def _dead_lettered(self, entry_id: str, reason: str) -> None:
        self.metrics.dead_letters.labels(reason.split(":", 1)[0]).inc()
