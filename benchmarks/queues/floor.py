"""The floor: the least a Python worker on Redis Streams can do for our work, for reference (not a task
queue: no retries, leases, specs, results or cancellation). A read loop hands entries to N threads; each
makes one blocking FetchItems call, then one pipelined XADD done + XACK. Run as its own process."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import redis

from benchmarks.queues.base import Adapter
from benchmarks.work import DEADLINE_S, DONE_FIELD, DONE_STREAM, concurrency, redis_url, request_for
from scheduler._proto import crawler_pb2_grpc

STREAM, GROUP = "floor:tasks", "floor"


def serve(addr: str) -> None:
    client = redis.Redis.from_url(redis_url())
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    stub = crawler_pb2_grpc.CrawlerServiceStub(grpc.insecure_channel(addr))
    size = concurrency()
    free = threading.Semaphore(size)

    def work(entry_id: bytes, task_id: int) -> None:
        try:
            stub.FetchItems(request_for(task_id), timeout=DEADLINE_S)
            pipe = client.pipeline(transaction=False)
            pipe.xadd(DONE_STREAM, {DONE_FIELD: task_id})
            pipe.xack(STREAM, GROUP, entry_id)
            pipe.execute()
        finally:
            free.release()

    with ThreadPoolExecutor(size) as pool:
        while True:
            free.acquire()
            count = 1
            while count < size and free.acquire(blocking=False):
                count += 1
            reply = client.xreadgroup(GROUP, "floor", {STREAM: ">"}, count=count, block=1000)
            entries = reply[0][1] if reply else []
            for _ in range(count - len(entries)):
                free.release()
            for entry_id, fields in entries:
                pool.submit(work, entry_id, int(fields[b"id"]))


class FloorAdapter(Adapter):
    name = "floor"

    def __init__(self) -> None:
        self.redis: redis.Redis | None = None

    def config(self, concurrency: int) -> str:
        return f"reference only: XREADGROUP loop + {concurrency} threads, blocking gRPC, XADD+XACK pipelined"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [sys.executable, "-m", __name__]

    def open(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)

    def enqueue_many(self, ids: range) -> None:
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.xadd(STREAM, {"id": task_id})
        pipe.execute()

    def enqueue_one(self, task_id: int) -> None:
        assert self.redis is not None
        self.redis.xadd(STREAM, {"id": task_id})

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


if __name__ == "__main__":
    import os

    from benchmarks.work import ENV_CRAWLER

    serve(os.environ[ENV_CRAWLER])
