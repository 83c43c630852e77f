"""Dramatiq with its Redis broker: ``dramatiq --processes 1 --threads N`` (its worker threads model);
``dramatiq-p2``: ``--processes 2``, N threads in each."""

from __future__ import annotations

import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.queues.base import Adapter
from benchmarks.work import SyncWork, redis_url

ACTOR = "work"
QUEUE = "default"

# worker side
broker = RedisBroker(url=redis_url())
dramatiq.set_broker(broker)
WORK = SyncWork()


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0)
def work(task_id: int) -> None:
    WORK(task_id)


# harness side
class DramatiqAdapter(Adapter):
    name = "dramatiq"
    processes = 1

    def __init__(self) -> None:
        self.client: RedisBroker | None = None

    def config(self, concurrency: int) -> str:
        return (
            f"dramatiq --processes {self.processes} --threads {concurrency} (+ its supervisor process), "
            "default middleware"
        )

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [
            sys.executable, "-m", "dramatiq", __name__,
            "--processes", str(self.processes), "--threads", str(concurrency),
        ]  # fmt: skip

    def open(self, redis_url: str) -> None:
        self.client = RedisBroker(url=redis_url)
        self.client.declare_queue(QUEUE)

    def enqueue_one(self, task_id: int) -> None:
        assert self.client is not None
        message = dramatiq.Message(queue_name=QUEUE, actor_name=ACTOR, args=(task_id,), kwargs={}, options={})
        self.client.enqueue(message)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class DramatiqP2Adapter(DramatiqAdapter):
    name = "dramatiq-p2"
    processes = 2
