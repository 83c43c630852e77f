"""What the harness needs from each queue."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from benchmarks.work import DONE_FIELD, DONE_STREAM

BIN = Path(sys.executable).parent  # console scripts of the venv the harness runs in
ENQUEUE_CHUNK = 50  # asyncio clients: this many enqueues in flight at once (redis-py pools hold 100)


class Adapter:
    name = ""
    done_stream = DONE_STREAM
    done_field = DONE_FIELD
    grpc_mode = "sync"  # the task's gRPC client: the sync stub, or grpc.aio for asyncio workers
    note = ""  # anything the reader should know about this run (printed under the table)

    def config(self, concurrency: int) -> str:
        """One line: worker program, pool, concurrency, processes."""
        raise NotImplementedError

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        raise NotImplementedError

    def worker_env(self, redis_url: str, crawler_addr: str, concurrency: int) -> dict[str, str]:
        return {}

    def open(self, redis_url: str) -> None:
        """Harness-side clients for enqueueing."""

    def prepare(self, ids: range) -> None:
        """Anything the queue needs before those task ids are enqueued (ours: task specs)."""

    def enqueue_many(self, ids: range) -> None:
        for task_id in ids:
            self.enqueue_one(task_id)

    def enqueue_one(self, task_id: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsyncAdapter(Adapter):
    """An asyncio client driven from the harness's plain threads through a private event loop."""

    grpc_mode = "aio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    async def aopen(self, redis_url: str) -> None:
        raise NotImplementedError

    async def aenqueue(self, task_id: int) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    def open(self, redis_url: str) -> None:
        self.run(self.aopen(redis_url))

    def enqueue_one(self, task_id: int) -> None:
        self.run(self.aenqueue(task_id))

    def enqueue_many(self, ids: range) -> None:
        async def all_of() -> None:
            for start in range(0, len(ids), ENQUEUE_CHUNK):
                await asyncio.gather(*(self.aenqueue(i) for i in ids[start : start + ENQUEUE_CHUNK]))

        self.run(all_of())

    def close(self) -> None:
        try:
            self.run(self.aclose())
        finally:
            self.loop.close()
