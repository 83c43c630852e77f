"""Ours: the real daemon (``python -m scheduler run``), fed by our Producer; tasks registered as specs."""

from __future__ import annotations

import subprocess
import sys

import redis

from benchmarks.queues.base import Adapter
from benchmarks.work import KEYWORD
from scheduler.taskqueue import Producer, keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

SPEC_CHUNK = 1000


def cli_works() -> tuple[bool, str]:
    probe = subprocess.run(
        [sys.executable, "-c", "import scheduler.cli.run_cmd, scheduler.daemon.app"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = probe.stderr.strip().splitlines()
    return probe.returncode == 0, lines[-1] if lines else ""


class OursAdapter(Adapter):
    name = "ours"
    done_stream = keys.results_stream(keys.DEFAULT_STREAM)  # one entry per finished crawl
    done_field = b"task_id"

    def __init__(self) -> None:
        self.redis: redis.Redis | None = None
        self.producer: Producer | None = None
        ok, why = cli_works()
        if ok:
            self.launcher = ["-m", "scheduler", "run"]
        else:  # the same Daemon object, started by a 10-line launcher of ours; said under the table
            self.launcher = ["-m", "benchmarks.ours_daemon"]
            self.note = f"`python -m scheduler run` does not start in this tree ({why}); ran benchmarks/ours_daemon.py (same Daemon)"

    def config(self, concurrency: int) -> str:
        return f"scheduler daemon, {concurrency} worker threads, 1 process; XREADGROUP + Lua outcomes"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [sys.executable, *self.launcher]

    def worker_env(self, redis_url: str, crawler_addr: str, concurrency: int) -> dict[str, str]:
        return {
            "REDIS_URL": redis_url,
            "APP_CRAWLER_GRPC_ADDR": crawler_addr,
            "APP_WORKER_POOL_SIZE": str(concurrency),
            "APP_METRICS_PORT": "0",
            "APP_LOG_LEVEL": "warning",
            "APP_CONSUMER_NAME": "bench",
        }

    def open(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.producer = Producer(self.redis)

    def prepare(self, ids: range) -> None:
        assert self.redis is not None
        registry = RedisTaskRegistry(self.redis)
        for start in range(0, len(ids), SPEC_CHUNK):
            registry.put_many(TaskSpec(task_id=i, keyword=KEYWORD) for i in ids[start : start + SPEC_CHUNK])

    def enqueue_many(self, ids: range) -> None:
        assert self.producer is not None
        self.producer.submit_many(ids, "user_create")

    def enqueue_one(self, task_id: int) -> None:
        assert self.producer is not None
        self.producer.submit_task(task_id, "user_create")

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
