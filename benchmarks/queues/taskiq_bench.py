"""taskiq with taskiq-redis's RedisStreamBroker (the one its README recommends: acknowledgements), an async
task, ``taskiq worker --workers 1 --max-async-tasks N``; ``taskiq-w2``: ``--workers 2``, N in each."""

from __future__ import annotations

import sys

from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisStreamBroker

from benchmarks.queues.base import AsyncAdapter
from benchmarks.work import AsyncWork, redis_url

TASK = "bench.work"

# worker side
broker = RedisStreamBroker(url=redis_url())
WORK = AsyncWork()


@broker.task(task_name=TASK)
async def work(task_id: int) -> None:
    await WORK(task_id)


# harness side
class TaskiqAdapter(AsyncAdapter):
    name = "taskiq"
    workers = 1

    def config(self, concurrency: int) -> str:
        return (
            f"taskiq worker --workers {self.workers} --max-async-tasks {concurrency} (+ its supervisor), "
            "RedisStreamBroker"
        )

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [
            sys.executable, "-m", "taskiq", "worker", f"{__name__}:broker",
            "--workers", str(self.workers), "--max-async-tasks", str(concurrency), "--log-level", "WARNING",
        ]  # fmt: skip

    async def aopen(self, redis_url: str) -> None:
        # startup() creates the consumer group (at "$") before anything is sent, so nothing is missed
        self.client = RedisStreamBroker(url=redis_url)
        await self.client.startup()
        self.kicker: AsyncKicker[..., None] = AsyncKicker(task_name=TASK, broker=self.client, labels={})

    async def aenqueue(self, task_id: int) -> None:
        await self.kicker.kiq(task_id)

    async def aclose(self) -> None:
        await self.client.shutdown()


class TaskiqW2Adapter(TaskiqAdapter):
    name = "taskiq-w2"
    workers = 2
