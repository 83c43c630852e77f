"""arq: ``arq module.WorkerSettings`` with ``max_jobs`` N; defaults otherwise (it polls every 0.5 s when
idle: ``poll_delay``), logging at WARNING like everyone (arq's default logs every job at INFO)."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from benchmarks.queues.base import AsyncAdapter
from benchmarks.work import AsyncWork, concurrency, redis_url

# worker side
WORK = AsyncWork()


async def work(ctx: dict[str, Any], task_id: int) -> None:
    await WORK(task_id)


class WorkerSettings:
    functions: ClassVar = [work]
    redis_settings = RedisSettings.from_dsn(redis_url())
    max_jobs = concurrency()


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


# harness side
class ArqAdapter(AsyncAdapter):
    name = "arq"

    def config(self, concurrency: int) -> str:
        return f"arq worker, max_jobs {concurrency}, 1 process, poll_delay 0.5 s (default)"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [
            sys.executable, "-m", "arq", f"{__name__}.WorkerSettings",
            "--custom-log-dict", f"{__name__}.LOG_CONFIG",
        ]  # fmt: skip

    async def aopen(self, redis_url: str) -> None:
        self.pool: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))

    async def aenqueue(self, task_id: int) -> None:
        await self.pool.enqueue_job("work", task_id)

    async def aclose(self) -> None:
        await self.pool.aclose()
