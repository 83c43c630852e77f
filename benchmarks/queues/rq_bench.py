"""RQ: ``rq worker-pool -n N`` (RQ's way to run N jobs at once: N worker processes). RQ's default Worker
forks a work horse per job, so each job opens its own gRPC channel (gRPC channels do not survive a fork);
as RQ's performance notes advise, the job's modules are imported before the fork (the worker class lives
in this module). ``rq-simple`` runs SimpleWorker instead: no fork, one channel per worker process."""

from __future__ import annotations

import redis
from rq import Queue, SimpleWorker, Worker, get_current_job

from benchmarks.queues.base import BIN, Adapter
from benchmarks.work import SyncWork

FUNC = f"{__name__}.work"

# worker side
WORK = SyncWork()


def work(task_id: int) -> None:
    job = get_current_job()
    WORK(task_id, job.connection if job is not None else None)


class PreloadedWorker(Worker):
    """RQ's default forking Worker, loaded from here so grpc, protobuf and this module load once, pre-fork."""


class PreloadedSimpleWorker(SimpleWorker):
    pass


# harness side
class RqAdapter(Adapter):
    name = "rq"
    worker_class = f"{__name__}.PreloadedWorker"

    def __init__(self) -> None:
        self.redis: redis.Redis | None = None
        self.queue: Queue | None = None

    def config(self, concurrency: int) -> str:
        return f"rq worker-pool -n {concurrency} (+ pool process), Worker: fork per job, modules preloaded"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [
            str(BIN / "rq"), "worker-pool", "-n", str(concurrency), "-u", redis_url, "-l", "WARNING",
            "-w", self.worker_class, "default",
        ]  # fmt: skip

    def open(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.queue = Queue("default", connection=self.redis)

    def enqueue_many(self, ids: range) -> None:
        assert self.queue is not None and self.redis is not None
        with self.redis.pipeline() as pipe:
            jobs = [Queue.prepare_data(FUNC, args=(i,)) for i in ids]
            self.queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()

    def enqueue_one(self, task_id: int) -> None:
        assert self.queue is not None
        self.queue.enqueue(FUNC, task_id)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


class RqSimpleAdapter(RqAdapter):
    name = "rq-simple"
    worker_class = f"{__name__}.PreloadedSimpleWorker"

    def config(self, concurrency: int) -> str:
        return f"rq worker-pool -n {concurrency} (+ pool process), SimpleWorker: no fork"
