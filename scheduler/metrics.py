"""Prometheus metrics: the Go original's names where they exist, ours beside them.

Each Daemon owns one ``Metrics`` with its own CollectorRegistry, so several daemons can live in one
process (tests, embedding) without colliding in prometheus_client's global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# A crawl takes from milliseconds (fake crawler) to two minutes (the real one's worst case).
CRAWL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- the Go original's names -----------------------------------------------------------------
        self.queue_length = Gauge(
            "goodshunter_redis_queue_length", "Entries in the task stream (XLEN).", registry=r
        )
        self.queue_pending = Gauge(
            "goodshunter_redis_queue_pending",
            "Entries delivered to the group and not yet acknowledged.",
            registry=r,
        )
        self.queue_lag = Gauge(
            "goodshunter_redis_queue_lag", "Entries in the stream not yet delivered to the group.", registry=r
        )
        self.tasks_processed = Counter(
            "goodshunter_tasks_processed",
            "Task messages ended, by outcome: success, no_items, requeued, deferred, given_back, "
            "circuit_open, dead_lettered, skipped, duplicate, cancelled, stop.",
            ["status"],
            registry=r,
        )
        self.processing_duration = Histogram(
            "goodshunter_task_processing_duration_seconds",
            "Time from a worker starting a task to its outcome being recorded (the crawl, not the enqueue).",
            buckets=CRAWL_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "goodshunter_task_queue_wait_time_seconds",
            "Time from the entry being added to the stream to a worker starting it.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.retries = Counter("goodshunter_task_retry", "Tasks requeued with retry + 1.", registry=r)
        self.dead_letters = Counter(
            "goodshunter_task_dlq",
            "Entries moved to the dead-letter stream, by reason.",
            ["reason"],
            registry=r,
        )
        self.autoclaimed = Counter(
            "goodshunter_task_autoclaim",
            "Entries reclaimed from consumers that stopped renewing.",
            registry=r,
        )
        self.recovered = Counter(
            "goodshunter_task_recovered",
            "Entries taken up again from this daemon's own pending list after a lost reply or a failed batch.",
            registry=r,
        )
        self.run_locks_healed = Counter(
            "goodshunter_run_locks_healed",
            "Run locks that named no live run (a leak) and were taken over.",
            registry=r,
        )
        self.workers = Gauge("goodshunter_worker_pool_size", "Worker threads in the pool.", registry=r)
        self.workers_busy = Gauge("goodshunter_worker_pool_busy", "Workers running a task now.", registry=r)
        # -- ours ----------------------------------------------------------------------------------------
        self.crawler_calls = Histogram(
            "goodshunter_crawler_call_duration_seconds",
            "Each FetchItems call (every attempt), by gRPC status code.",
            ["code"],
            buckets=CRAWL_BUCKETS,
            registry=r,
        )
        self.circuit_state = Gauge(
            "goodshunter_crawler_circuit_state",
            "Crawler circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.lease_renewals = Counter(
            "goodshunter_lease_renewals", "Lease renewal rounds for in-flight entries.", registry=r
        )
        self.leases_lost = Counter(
            "goodshunter_leases_lost", "In-flight entries found reclaimed by another consumer.", registry=r
        )
        self.periodic_published = Counter(
            "goodshunter_periodic_published", "Periodic runs published to the stream.", registry=r
        )
        self.periodic_skipped = Counter(
            "goodshunter_periodic_skipped",
            "Periodic runs not published because the previous run was still queued, retrying or running.",
            registry=r,
        )
        self.duplicates = Counter(
            "goodshunter_task_duplicates_collapsed",
            "Executes not crawled because the same task already had a run queued or in flight.",
            registry=r,
        )
        self.delayed_retries = Gauge(
            "goodshunter_task_delayed_retries", "Retries waiting for their back-off delay.", registry=r
        )
        self.dlq_length = Gauge(
            "goodshunter_task_dlq_length", "Entries in the dead-letter stream.", registry=r
        )
        self.stops = Counter("goodshunter_task_stops", "Stop messages handled.", registry=r)
        self.store_errors = Counter(
            "goodshunter_task_store_errors",
            "Task database (app.task_store = mysql) queries that failed; the entry is retried.",
            registry=r,
        )
        self.item_events = Counter(
            "goodshunter_item_events",
            "New items and price drops found (app.task_store = mysql), by kind: new_item, price_drop.",
            ["kind"],
            registry=r,
        )
        self.mails_sent = Counter(
            "goodshunter_mails_sent",
            "Notification mails the SMTP server accepted, by kind.",
            ["kind"],
            registry=r,
        )
        self.mails_failed = Counter(
            "goodshunter_mails_failed",
            "Notification mails given up after their retries (the event is dropped, not queued), by kind.",
            ["kind"],
            registry=r,
        )
        self.redis_errors = Counter(
            "goodshunter_redis_errors",
            "Redis commands that failed (connection lost, loading...).",
            ["where"],
            registry=r,
        )

    def set_circuit(self, state: str) -> None:
        self.circuit_state.set(CIRCUIT_STATES.get(state, 2))
