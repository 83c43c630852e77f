"""The one unit of work every queue runs: one FetchItems call to the fake crawler, then a completion record.

Our daemon does this (and more: spec lookup, run marker, results with item de-duplication, status keys)
in its own code; the competitors run it as their task body. Each worker process opens one gRPC channel
and one Redis client on first use, after any fork (RQ forks a work horse per job, so it opens one per job).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import grpc
import redis
import redis.asyncio

from scheduler._proto import crawler_pb2, crawler_pb2_grpc

DONE_STREAM = "bench:done"  # competitors' tasks XADD their id here; the harness observes it
DONE_FIELD = b"id"
KEYWORD = "bench"
DEADLINE_S = 30.0

ENV_REDIS = "BENCH_REDIS_URL"
ENV_CRAWLER = "BENCH_CRAWLER_ADDR"
ENV_CONCURRENCY = "BENCH_CONCURRENCY"


def concurrency() -> int:
    return int(os.environ.get(ENV_CONCURRENCY, "8"))


def redis_url() -> str:
    return os.environ.get(ENV_REDIS, "redis://127.0.0.1:6379/0")


def request_for(task_id: int) -> crawler_pb2.FetchRequest:
    return crawler_pb2.FetchRequest(
        task_id=str(task_id), keyword=KEYWORD, platform=crawler_pb2.PLATFORM_MERCARI
    )


class SyncWork:
    """For thread- and process-based workers (Celery, Dramatiq, RQ)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._stub: Any = None
        self._redis: redis.Redis | None = None

    def _clients(self) -> tuple[Any, redis.Redis]:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    channel = grpc.insecure_channel(os.environ[ENV_CRAWLER])
                    self._stub = crawler_pb2_grpc.CrawlerServiceStub(channel)
                    self._redis = redis.Redis.from_url(redis_url())
                    self._pid = os.getpid()
        assert self._redis is not None
        return self._stub, self._redis

    def __call__(self, task_id: int, connection: redis.Redis | None = None) -> None:
        stub, client = self._clients()
        stub.FetchItems(request_for(task_id), timeout=DEADLINE_S)
        (connection or client).xadd(DONE_STREAM, {DONE_FIELD: task_id})


class AsyncWork:
    """For asyncio workers (taskiq, SAQ, arq): grpc.aio and redis.asyncio, bound to the running loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stub: Any = None
        self._redis: redis.asyncio.Redis | None = None

    async def __call__(self, task_id: int) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            channel = grpc.aio.insecure_channel(os.environ[ENV_CRAWLER])
            self._stub = crawler_pb2_grpc.CrawlerServiceStub(channel)
            self._redis = redis.asyncio.Redis.from_url(redis_url())
            self._loop = loop
        assert self._redis is not None
        await self._stub.FetchItems(request_for(task_id), timeout=DEADLINE_S)
        await self._redis.xadd(DONE_STREAM, {DONE_FIELD: task_id})
