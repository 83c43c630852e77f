"""The demo system: a private Redis, the fake crawler and the real daemon on one machine, sample searches.

The crawler and the daemon run as child processes started the way an operator starts them (``python -m``
with a config file), so the demo shows the real daemon talking to Redis and to gRPC over sockets. Each
child gets its own session: a Ctrl-C in the terminal reaches only the demo, which then stops them in
order (the daemon first, so it drains and records its in-flight crawls while Redis and the crawler are
still up). The samples and their pickers are ``samples``, the children's start and stop ``children``, and
the tracker and what it fills in ``progress``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import redis

from scheduler.config.kinds import compact_duration
from scheduler.config.load import load_settings
from scheduler.config.settings import Settings
from scheduler.devtools.children import spawn, terminate
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.errors import SchedulerError
from scheduler.inspect.daemons import heartbeat_of
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.registry import TaskSpec

CONSUMER: Final = "demo-1"
CRAWLER_DELAY_MS: Final = 80
START_TIMEOUT_S: Final = 30.0  # a cold start imports grpc and protobuf in each child
SHUTDOWN_GRACE_S: Final = 5.0
MAX_TASKS: Final = 50


class Interrupted(SchedulerError):
    """A stop was requested while the system was still starting."""


class DemoSystem:
    """Constructor stores; ``start()`` brings everything up; ``stop_daemon()``, then ``close()``."""

    def __init__(self, *, workers: int, keep_data: bool, stop: threading.Event) -> None:
        self.workers = workers
        self.keep_data = keep_data
        self._stop = stop
        self.workdir = Path(tempfile.mkdtemp(prefix="goodshunter-demo-"))
        self.daemon_log = self.workdir / "daemon.log"
        self.calls_log = self.workdir / "crawler-calls.jsonl"
        self.config_path = self.workdir / "config.json"
        self.metrics_port = 0
        self.redis: RedisServer | None = None
        self.crawler: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_exit: int | None = None
        self.settings: Settings | None = None
        self.client: redis.Redis | None = None

    def pids(self) -> dict[str, int | None]:
        redis_proc = self.redis.process if self.redis else None
        return {
            "redis": redis_proc.pid if redis_proc else None,
            "crawler": self.crawler.pid if self.crawler else None,
            "daemon": self.daemon.pid if self.daemon else None,
        }

    # -- start ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.redis = RedisServer(data_dir=str(self.workdir / "redis"))
        os.makedirs(self.redis.data_dir, exist_ok=True)
        # redis-server stays in the terminal's process group (RedisServer starts it), so a Ctrl-C would
        # kill it under the draining daemon; a blocked signal survives exec, and SIGTERM still stops it.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.redis.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self.client = self.redis.client(socket_timeout=5)
        crawler_addr = self._start_crawler()
        self.metrics_port = free_port()
        self.settings = self._write_config(crawler_addr)
        self._start_daemon()

    def _start_crawler(self) -> str:
        argv = [sys.executable, "-m", "crawler_stub", "--port", "0", "--delay-ms", str(CRAWLER_DELAY_MS),
                "--calls-log", str(self.calls_log)]  # fmt: skip
        with open(self.workdir / "crawler.log", "wb") as err:
            self.crawler = spawn(argv, stdout=subprocess.PIPE, stderr=err)
        assert self.crawler.stdout is not None
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.crawler.stdout, selectors.EVENT_READ)
            self._wait_until(lambda: bool(selector.select(0)), "the fake crawler", self.crawler)
            line = self.crawler.stdout.readline()  # "listening on 127.0.0.1:PORT", its contract
        if not line.startswith(b"listening on "):
            raise SchedulerError(f"the fake crawler did not start: {line!r}; see {self.workdir}/crawler.log")
        return line.decode().split()[-1]

    def _write_config(self, crawler_addr: str) -> Settings:
        assert self.redis is not None
        d = compact_duration
        # Short periods so a few seconds show periodic runs, retries and heartbeats; the rest as shipped.
        app = {
            "crawler_grpc_addr": crawler_addr, "consumer_name": CONSUMER, "worker_pool_size": self.workers,
            "crawler_deadline": d(10), "retry_backoff_base": d(1), "retry_backoff_max": d(4),
            "lease_timeout": d(10), "reclaim_interval": d(2), "heartbeat_interval": d(1),
            "shutdown_grace": d(SHUTDOWN_GRACE_S), "breaker_open_duration": d(2),
            "metrics_host": "127.0.0.1", "metrics_port": self.metrics_port, "log_format": "json",
        }  # fmt: skip
        document = {"app": app, "redis": {"url": self.redis.url}}
        self.config_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        return load_settings(str(self.config_path), env={})

    def _start_daemon(self) -> None:
        assert self.client is not None and self.settings is not None
        argv = [sys.executable, "-m", "scheduler", "run", "--config", str(self.config_path),
                "--consumer", CONSUMER, "--log-format", "json"]  # fmt: skip
        with open(self.daemon_log, "wb") as out:
            self.daemon = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        client, stream, group = self.client, self.settings.task_queue_stream, self.settings.task_queue_group
        self._wait_until(
            lambda: heartbeat_of(client, stream, group, CONSUMER) is not None, "the daemon", self.daemon
        )

    def _wait_until(self, ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self._stop.is_set():
                raise Interrupted(f"interrupted while starting {what}")
            if process.poll() is not None:
                raise SchedulerError(f"{what} exited with {process.returncode} at start-up{self._log_tail()}")
            if time.monotonic() > deadline:
                raise SchedulerError(f"{what} not ready after {START_TIMEOUT_S:.0f}s{self._log_tail()}")
            self._stop.wait(0.05)

    def _log_tail(self) -> str:
        lines: list[str] = []
        for name in ("crawler.log", "daemon.log"):
            with contextlib.suppress(OSError):
                lines += [f"  {name}: {line}" for line in (self.workdir / name).read_text().splitlines()[-5:]]
        return (":\n" + "\n".join(lines)) if lines else ""

    def register(self, specs: list[TaskSpec]) -> None:
        assert self.settings is not None and self.client is not None
        Lifecycle(self.settings, self.client).register(specs)

    # -- stop -------------------------------------------------------------------------------------------

    def daemon_alive(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def stop_daemon(self, forced: threading.Event) -> int | None:
        """SIGTERM, then wait for its drain (within its grace); SIGKILL if forced or past the grace."""
        if self.daemon is not None:
            self.daemon_exit = terminate(self.daemon, SHUTDOWN_GRACE_S + 5, forced)
        return self.daemon_exit

    def close(self, forced: threading.Event) -> None:
        """Stop whatever still runs, daemon first and Redis last, then remove the work directory. Every
        step runs even if an earlier one fails (ExitStack: last registered, first run)."""
        with contextlib.ExitStack() as steps:
            if not self.keep_data:
                steps.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            if (server := self.redis) is not None:
                steps.callback(lambda: server.kill() if forced.is_set() else server.stop())
            if self.client is not None:
                steps.callback(self.client.close)
            if self.crawler is not None:
                if self.crawler.stdout is not None:
                    steps.callback(self.crawler.stdout.close)
                steps.callback(terminate, self.crawler, 5.0, forced)
            if self.daemon_alive():
                steps.callback(self.stop_daemon, forced)
