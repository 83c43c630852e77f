"""Ours: the real daemon (``python -m scheduler run``) at its default log level, fed by our Producer; tasks
registered as specs. ``ours-p2``: the same command with ``APP_PROCESSES=2`` (its supervisor and two daemon
processes). ``ours-ref``: the daemon from another checkout (``BENCH_OURS_TREE``), for a before/after
comparison in one run; the harness side (Producer, registry) stays this tree's: the wire format is shared.
``ours-mysql``: the daemon on GoodsHunter's MySQL data path, against the machine's MariaDB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import redis

from benchmarks.queues.base import Adapter
from benchmarks.work import KEYWORD
from scheduler.devtools.private_mysql import PrivateDatabase, unreachable_reason
from scheduler.taskqueue import Producer, keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

SPEC_CHUNK = 1000


ENV_TREE = "BENCH_OURS_TREE"


def register_specs(client: redis.Redis, ids: range) -> None:
    """A running spec per task id (the daemon skips an id it does not know), in chunks of SPEC_CHUNK."""
    registry = RedisTaskRegistry(client)
    for start in range(0, len(ids), SPEC_CHUNK):
        registry.put_many(TaskSpec(task_id=i, keyword=KEYWORD) for i in ids[start : start + SPEC_CHUNK])


def cli_works(env: dict[str, str]) -> tuple[bool, str]:
    """Whether ``python -m scheduler run`` can start with that environment (a module another engineer is
    still writing may not import yet)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import scheduler.cli.run_cmd, scheduler.daemon.app"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )
    lines = probe.stderr.strip().splitlines()
    return probe.returncode == 0, lines[-1] if lines else ""


class OursAdapter(Adapter):
    name = "ours"
    done_stream = keys.results_stream(keys.DEFAULT_STREAM)  # one entry per finished crawl
    done_field = b"task_id"
    processes = 1

    def __init__(self) -> None:
        self.redis: redis.Redis | None = None
        self.producer: Producer | None = None
        ok, why = cli_works(self.source_env())
        if ok:
            self.launcher = ["-m", "scheduler", "run"]
        else:  # the same Daemon object, started by a 10-line launcher of ours; said under the table
            self.launcher = ["-m", "benchmarks.ours_daemon"]
            self.note = f"`python -m scheduler run` does not start in this tree ({why}); ran benchmarks/ours_daemon.py (same Daemon)"

    def source_env(self) -> dict[str, str]:
        """Environment that picks the daemon's source tree: this one (the harness's PYTHONPATH)."""
        return {}

    def config(self, concurrency: int) -> str:
        if self.processes == 1:
            shape = f"{concurrency} worker threads, 1 process"
        else:
            shape = f"{self.processes} daemon processes x {concurrency} worker threads (+ supervisor)"
        return f"scheduler daemon, {shape}, log level info (default); XREADGROUP + Lua outcomes"

    def worker_command(self, concurrency: int, redis_url: str) -> list[str]:
        return [sys.executable, *self.launcher]

    def worker_env(self, redis_url: str, crawler_addr: str, concurrency: int) -> dict[str, str]:
        """The daemon's settings; its log level is left at its default (info): the issue asks for the real
        daemon as it runs, and its log goes to the worker's log file, not a pipe."""
        return {
            "REDIS_URL": redis_url,
            "APP_CRAWLER_GRPC_ADDR": crawler_addr,
            "APP_WORKER_POOL_SIZE": str(concurrency),
            "APP_METRICS_PORT": "0",
            "APP_CONSUMER_NAME": "bench",
            "APP_PROCESSES": str(self.processes),
            **self.source_env(),
        }

    def open(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.producer = Producer(self.redis)

    def prepare(self, ids: range) -> None:
        assert self.redis is not None
        register_specs(self.redis, ids)

    def enqueue_many(self, ids: range) -> None:
        assert self.producer is not None
        self.producer.submit_many(ids, "user_create")

    def enqueue_one(self, task_id: int) -> None:
        assert self.producer is not None
        self.producer.submit_task(task_id, "user_create")

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


class OursP2Adapter(OursAdapter):
    """Two daemon processes under our supervisor: what `run --processes 2` gives on a 2-core machine."""

    name = "ours-p2"
    processes = 2

    def __init__(self) -> None:
        super().__init__()
        if self.launcher != ["-m", "scheduler", "run"]:  # the fallback launcher has no supervisor
            raise RuntimeError("`python -m scheduler run` does not start in this tree: no supervisor to run")


class OursRefAdapter(OursAdapter):
    """Our daemon from the checkout in ``BENCH_OURS_TREE`` (PYTHONPATH for that worker only), so a before
    and an after run side by side, on the same stage and under the same load drift."""

    name = "ours-ref"

    def __init__(self) -> None:
        tree = os.environ.get(ENV_TREE, "")
        if not tree or not (Path(tree) / "scheduler" / "__main__.py").is_file():
            raise RuntimeError(f"set {ENV_TREE} to a checkout of this project (has scheduler/__main__.py)")
        self.tree = str(Path(tree).resolve())
        super().__init__()
        self.commit = subprocess.run(
            ["git", "-C", self.tree, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()

    def source_env(self) -> dict[str, str]:
        """The other tree first on PYTHONPATH: it shadows this tree's editable install of ``scheduler``;
        this tree stays after it for anything the other lacks (the fake crawler is started separately)."""
        here = str(Path(__file__).resolve().parents[2])
        return {"PYTHONPATH": os.pathsep.join([self.tree, here])}

    def config(self, concurrency: int) -> str:
        return f"{super().config(concurrency)}; from {self.tree} (commit {self.commit or '?'})"


class OursMysqlAdapter(OursAdapter):
    """Our daemon on GoodsHunter's data path (``app.task_store = mysql``): each task a row of a private
    database on the machine's MariaDB/MySQL (``scheduler.devtools.private_mysql``, the tests' own), read
    per run, and each crawl's items and timeline written there; beside ``ours``, the same work on the
    embedded Redis registry. Rows are made with mails off (no SMTP server in a benchmark)."""

    name = "ours-mysql"

    def __init__(self) -> None:
        why = unreachable_reason()
        if why:
            raise RuntimeError(why)
        super().__init__()
        self.db: PrivateDatabase | None = None

    def config(self, concurrency: int) -> str:
        return f"{super().config(concurrency)}; task_store mysql (private database on the local MariaDB)"

    def open(self, redis_url: str) -> None:
        super().open(redis_url)
        self.db = PrivateDatabase()

    def prepare(self, ids: range) -> None:
        """A user and one running task row per id, as GoodsHunter's API writes them (ids given: the
        stream's task ids are the rows' ids)."""
        assert self.db is not None
        self.db.add_running_tasks(
            [(1, "bench@example.com")], [(i, 1, KEYWORD, False) for i in ids], datetime.now()
        )

    def worker_env(self, redis_url: str, crawler_addr: str, concurrency: int) -> dict[str, str]:
        assert self.db is not None
        return {**super().worker_env(redis_url, crawler_addr, concurrency), "APP_TASK_STORE": "mysql",
                "MYSQL_DSN": self.db.dsn}  # fmt: skip

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.db is not None:
                self.db.drop()
                self.db = None
