"""Running the real console scripts as subprocesses: daemons, their logs, the fake crawler's calls log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from scheduler.taskqueue import Producer, keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

SCHEDULER = Path(sys.executable).parent / "goodshunter-scheduler"
STREAM, GROUP = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP

# Short timings so faults play out in seconds; every one of them is a real setting.
FAST_ENV = {
    "APP_METRICS_PORT": "0",
    "APP_LOG_FORMAT": "json",
    "APP_LOG_LEVEL": "info",
    "APP_CRAWLER_DEADLINE": "5s",
    "APP_CRAWLER_ATTEMPTS": "3",
    "APP_CRAWLER_BACKOFF_INITIAL": "20ms",
    "APP_CRAWLER_BACKOFF_MAX": "100ms",
    "APP_MAX_RETRY": "3",
    "APP_RETRY_BACKOFF_BASE": "200ms",
    "APP_RETRY_BACKOFF_MAX": "2s",
    "APP_LEASE_TIMEOUT": "2s",
    "APP_RECLAIM_INTERVAL": "500ms",
    "APP_HEARTBEAT_INTERVAL": "1s",
    "APP_SHUTDOWN_GRACE": "10s",
    "APP_BREAKER_OPEN_DURATION": "1s",
}


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@dataclass
class DaemonProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def threads(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"msg": line, "level": "RAW"})
        return lines


@dataclass
class Daemons:
    """Starts daemons against one Redis and one crawler; stops (or reaps) them all at teardown."""

    tmp: Path
    redis_url: str
    crawler_addr: str
    env: dict[str, str] = field(default_factory=dict)
    started: list[DaemonProcess] = field(default_factory=list)

    def start(self, name: str, workers: int = 8, wait: bool = True, **env: str) -> DaemonProcess:
        full_env = {
            **os.environ,
            **FAST_ENV,
            "REDIS_URL": self.redis_url,
            "APP_CRAWLER_GRPC_ADDR": self.crawler_addr,
            **self.env,
            **env,
        }
        log_path = self.tmp / f"{name}.log"
        before = _count_started(log_path)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(SCHEDULER), "run", "--consumer", name, "--workers", str(workers)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        daemon = DaemonProcess(name, process, log_path)
        self.started.append(daemon)
        if wait:
            # "daemon started" is logged after start-up (name claimed, scripts loaded, threads running); the
            # heartbeat key alone is written earlier, by the name claim, and survives a kill -9
            def started() -> bool:
                return process.poll() is not None or _count_started(log_path) > before

            wait_until(started, 15, what=f"{name} started")
            assert process.poll() is None, f"{name} exited early:\n{log_path.read_text()[-3000:]}"
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(10)


def register(client: redis.Redis, specs: Iterable[TaskSpec], submit: bool = True) -> list[str]:
    """Store specs and enqueue one user_create execute each (no periodic schedule: one run per task)."""
    specs = list(specs)
    RedisTaskRegistry(client).put_many(specs)
    if not submit:
        return []
    return Producer(client).submit_many([s.task_id for s in specs], "user_create")


def read_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def calls_per_task(path: Path) -> Counter[int]:
    return Counter(int(call["task_id"]) for call in read_calls(path))


def statuses(client: redis.Redis, task_ids: Iterable[int]) -> dict[int, str | None]:
    ids = list(task_ids)
    values = client.mget([keys.crawl_status_key(t) for t in ids])
    return {t: (v.decode() if v else None) for t, v in zip(ids, values, strict=True)}


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
        for _, fields in client.xrange(keys.dlq_stream(STREAM))
    ]


def results(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
        for _, fields in client.xrange(keys.results_stream(STREAM))
    ]


def pending_count(client: redis.Redis) -> int:
    try:
        return int(client.xpending(STREAM, GROUP)["pending"])
    except redis.ResponseError:
        return 0


def _count_started(log_path: Path) -> int:
    """How many times a daemon logging to this file (appended to by restarts of one name) has started."""
    if not log_path.exists():
        return 0
    return log_path.read_text(errors="replace").count('"msg": "daemon started"')
