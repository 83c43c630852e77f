"""SAQ on Redis: ``saq module.settings --workers 1`` with ``concurrency`` N."""

from __future__ import annotations

import sys
from typing import Any

from saq import Queue

from benchmarks.queues.base import AsyncAdapter
from benchmarks.work import AsyncWork, concurrency, redis_url

# worker side
WORK = AsyncWork()


async def work(ctx: dict[str, Any], *, task_id: int) -> None:
    await WORK(task_id)


settings = {"queue": Queue.from_url(redis_url()), "functions": [work], "concurrency": concurrency()}


# harness side
class SaqAdapter(AsyncAdapter):
    name = "saq"

    def config(self, concurrency: int) -> str:
        return f"saq --workers 1, concurrency {concurrency}, defaults"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [sys.executable, "-m", "saq", f"{__name__}.settings", "--workers", "1"]

    async def aopen(self, redis_url: str) -> None:
        self.queue = Queue.from_url(redis_url)
        await self.queue.connect()

    async def aenqueue(self, task_id: int) -> None:
        await self.queue.enqueue("work", task_id=task_id)

    async def aclose(self) -> None:
        await self.queue.disconnect()
