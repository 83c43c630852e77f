"""Celery with its Redis broker: ``celery worker --pool threads`` (the pool Celery documents for I/O-bound
tasks besides gevent/eventlet; one process, like ours), results ignored."""

from __future__ import annotations

import sys

from celery import Celery

from benchmarks.queues.base import Adapter
from benchmarks.work import SyncWork, redis_url

TASK = "bench.work"

# worker side
app = Celery("bench", broker=redis_url())
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
WORK = SyncWork()


@app.task(name=TASK, ignore_result=True)
def work(task_id: int) -> None:
    WORK(task_id)


# harness side
class CeleryAdapter(Adapter):
    name = "celery"

    def __init__(self) -> None:
        self.client: Celery | None = None

    def config(self, concurrency: int) -> str:
        return f"celery worker --pool threads --concurrency {concurrency}, 1 process, prefetch x4 (default)"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", __name__, "worker",
            "--pool", "threads", "--concurrency", str(concurrency), "--loglevel", "WARNING",
            # cluster chatter between workers; nothing to do with one worker's task path
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip

    def open(self, redis_url: str) -> None:
        self.client = Celery("bench-client", broker=redis_url)
        self.client.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)

    def enqueue_one(self, task_id: int) -> None:
        assert self.client is not None
        self.client.send_task(TASK, args=(task_id,), ignore_result=True)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
