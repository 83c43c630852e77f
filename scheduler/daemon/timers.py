"""The daemon's background timers: lease renewal, and the maintenance jobs every daemon runs safely in
parallel (delayed-retry mover, periodic publisher, trimming, heartbeat, consumer reaping, queue gauges).

Each job is a plain function called on its own period by one thread; a failing job is logged and backed
off, never fatal (a Redis outage fails them all together, and they all come back together).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from scheduler.errors import QueueConnectionError

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    period: Callable[[], float]  # seconds until the next run; re-read after every run
    run: Callable[[], float | None]  # may return an earlier next-run delay (e.g. next delayed retry)
    due: float = 0.0
    failures: int = 0


class TimerThread:
    """Runs jobs on their periods in one thread until stopped. Blocks on an Event, so stop is prompt."""

    def __init__(self, name: str, jobs: list[Job], stopping: threading.Event) -> None:
        self.jobs = jobs
        self._stopping = stopping
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_soon(self, job: Job) -> None:
        """Run ``job`` at the next turn instead of waiting for its period."""
        job.due = 0.0
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            for job in self.jobs:
                if job.due <= now:
                    self._run(job, now)
            next_due = min(job.due for job in self.jobs)
            self._wake.wait(max(0.0, next_due - time.monotonic()))
            self._wake.clear()

    def _run(self, job: Job, now: float) -> None:
        try:
            sooner = job.run()
        except (QueueConnectionError, redis.ConnectionError, redis.TimeoutError) as exc:
            job.failures += 1
            # never wait longer than the job's own period (a lease renewal must not lapse for a back-off)
            backoff = min(5.0, job.period(), 0.2 * 2 ** min(job.failures, 5))
            if job.failures == 1 or job.failures % 20 == 0:
                log.warning("%s: %s (retrying in %.1fs)", job.name, exc, backoff, extra={"job": job.name})
            job.due = now + backoff
            return
        except redis.ResponseError as exc:
            # Redis refused (NOGROUP after the stream was deleted, OOM, READONLY…): an operational state,
            # one line, not a traceback; the read loop recreates a missing group
            job.failures += 1
            if job.failures == 1 or job.failures % 20 == 0:
                log.warning("%s: Redis refused: %s", job.name, exc, extra={"job": job.name})
            job.due = now + min(30.0, job.period(), 1.0 * job.failures)
            return
        except Exception:
            job.failures += 1
            log.exception("%s failed", job.name, extra={"job": job.name})
            job.due = now + min(30.0, job.period(), 1.0 * job.failures)
            return
        if job.failures:
            log.info("%s recovered after %d failures", job.name, job.failures, extra={"job": job.name})
        job.failures = 0
        period = job.period()
        job.due = now + (min(period, sooner) if sooner is not None else period)


def heartbeat_payload(
    consumer: str, busy: int, workers: int, circuit: str, identity: Mapping[str, object] | None = None
) -> str:
    """The heartbeat JSON: readers rely on ``ts`` (and ``busy``, ``workers``, ``circuit``); ``identity``
    adds what tells this process from an earlier one on the same host and pid (``token``, ``boot_id``,
    ``pid_ns``, ``started``: see scheduler/daemon/startup.py). Fields are only ever added."""
    return json.dumps(
        {
            "consumer": consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ts": time.time(),
            "busy": busy,
            "workers": workers,
            "circuit": circuit,
            **(identity or {}),
        }
    )
