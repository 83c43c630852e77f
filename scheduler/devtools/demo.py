"""The demo system: a private Redis, the fake crawler and the real daemon on one machine, sample searches.

The crawler and the daemon run as child processes started the way an operator starts them (``python -m``
with a config file), so the demo shows the real daemon talking to Redis and to gRPC over sockets. Each
child gets its own session: a Ctrl-C in the terminal reaches only the demo, which then stops them in
order (the daemon first, so it drains and records its in-flight crawls while Redis and the crawler are
still up). ``Tracker`` reads the progress back from Redis through ``scheduler.inspect``: the keys the Go
API and ``stats`` read. The sample table is ``samples``, the children's start and stop ``children``, and
what the tracker fills in ``progress``.

(Over 300 lines: it holds what ``scheduler.cli.demo_cmd`` imports from it by name, the system and its
tracker with the sample pickers; ``samples()`` and ``sample_specs()`` belong in ``samples`` once demo_cmd
imports them from there.)
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
from scheduler.devtools.progress import QueueState, TaskProgress, queue_state
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.devtools.samples import SAMPLES, Sample
from scheduler.errors import SchedulerError
from scheduler.inspect.daemons import heartbeat_of
from scheduler.inspect.delayed import delayed_retries
from scheduler.inspect.entries import decode_or_none, read_after
from scheduler.inspect.queue import queue_gauges
from scheduler.inspect.tasks import task_states
from scheduler.taskqueue import keys
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.registry import TaskSpec

CONSUMER: Final = "demo-1"
CRAWLER_DELAY_MS: Final = 80
START_TIMEOUT_S: Final = 30.0  # a cold start imports grpc and protobuf in each child
SHUTDOWN_GRACE_S: Final = 5.0
MAX_TASKS: Final = 50


def samples(count: int) -> list[Sample]:
    """``count`` samples; past the list, the plain searches again with a model number (``sony a7c 2``)."""
    plain = [s for s in SAMPLES if not s.script]
    out = list(SAMPLES[:count])
    for i in range(count - len(out)):
        base = plain[i % len(plain)]
        out.append(
            Sample(f"{base.search} {2 + i // len(plain)}", base.platform, base.min_price, base.max_price)
        )
    return out


def sample_specs(chosen: list[Sample], interval_s: float) -> list[TaskSpec]:
    return [
        TaskSpec(
            task_id=n,
            keyword=s.keyword,
            platform=s.platform,
            min_price=s.min_price,
            max_price=s.max_price,
            interval_s=interval_s,
        )
        for n, s in enumerate(chosen, start=1)
    ]


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


# -- progress, read back from Redis --------------------------------------------------------------------


class Tracker:
    """Reads the daemon's work back from Redis (and the crawler's calls log); ``poll()`` returns events."""

    def __init__(
        self, client: redis.Redis, settings: Settings, chosen: list[Sample], calls_log: Path
    ) -> None:
        self.redis = client
        self.settings = s = settings
        # task ids as sample_specs() numbers them
        self.tasks = {n: TaskProgress(n, sample) for n, sample in enumerate(chosen, start=1)}
        self.queue = QueueState()
        self._calls_log = calls_log
        self._calls_offset = 0
        self._streams = {
            "results": keys.results_stream(s.task_queue_stream),
            "dlq": keys.dlq_stream(s.task_queue_stream),
            "tasks": s.task_queue_stream,
        }
        self._cursors = dict.fromkeys(self._streams, "0-0")
        self._requeues: set[tuple[int, int, str]] = set()

    def poll(self) -> list[tuple[int, str]]:
        self._read_state()
        events = self._read_results() + self._read_requeues() + self._read_dead_letters()
        self._read_calls()
        return events

    def _new_entries(self, name: str) -> list[tuple[str, dict[str, str]]]:
        rows = read_after(self.redis, self._streams[name], self._cursors[name])
        if rows:
            self._cursors[name] = rows[-1][0]
        return rows

    def _read_results(self) -> list[tuple[int, str]]:
        events = []
        for _, entry in self._new_entries("results"):
            task = self.tasks.get(int(entry["task_id"]))
            if task is None:
                continue
            new = len(json.loads(entry.get("new_items") or "[]"))
            task.ok += 1
            task.items += int(entry.get("total_found") or 0)
            task.new_items += new
            found = (
                f"{entry.get('total_found')} items, {new} new" if entry["status"] == "success" else "no items"
            )
            events.append((task.task_id, f"crawl {task.crawls}: {entry['status']} ({found})"))
        return events

    def _read_requeues(self) -> list[tuple[int, str]]:
        """A requeue is parked in the delayed set, then moved into the stream: seen in either, once."""
        payloads = [fields.get(keys.DATA_FIELD, "") for _, fields in self._new_entries("tasks")]
        payloads += [
            parked.payload for parked in delayed_retries(self.redis, self.settings.task_queue_stream)
        ]
        events = []
        for payload in payloads:
            message = decode_or_none(payload)
            task = self.tasks.get(message.task_id) if message else None
            if message is None or task is None or message.retry == 0:
                continue
            key = (message.task_id, message.retry, message.timestamp.isoformat())
            if key not in self._requeues:
                self._requeues.add(key)
                task.failed += 1
                why = f": {task.message}" if task.message else ""
                events.append(
                    (task.task_id, f"crawl {task.crawls} failed{why}; requeued as retry {message.retry}")
                )
        return events

    def _read_dead_letters(self) -> list[tuple[int, str]]:
        events = []
        for _, entry in self._new_entries("dlq"):
            message = decode_or_none(entry.get("payload", ""))
            task = self.tasks.get(message.task_id) if message else None
            if task is None:
                continue
            task.dead_letters += 1
            reason = entry.get("reason", "")
            if reason.startswith(("permanent", "max_retry")):  # not a crash loop: a crawl that failed
                task.failed += 1
            events.append((task.task_id, f"crawl {task.crawls} dead-lettered ({reason})"))
        return events

    def _read_calls(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self._calls_log, "rb") as log:
            log.seek(self._calls_offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1] if b"\n" in chunk else b""
        self._calls_offset += len(complete)
        for line in complete.splitlines():
            task = self.tasks.get(int(json.loads(line)["task_id"]))
            if task is not None:
                task.calls += 1

    def _read_state(self) -> None:
        s = self.settings
        states = task_states(self.redis, s.task_queue_stream, list(self.tasks))
        now_ms = time.time() * 1000
        for i, state in states.items():
            task = self.tasks[i]
            task.status, task.message = state.status or "", state.message or ""
            due = state.next_run_ms
            task.next_run_in = None if due is None else max(0.0, (due - now_ms) / 1000)
        gauges = queue_gauges(self.redis, s.task_queue_stream, s.task_queue_group)
        self.queue = queue_state(
            gauges, heartbeat_of(self.redis, s.task_queue_stream, s.task_queue_group, CONSUMER)
        )
