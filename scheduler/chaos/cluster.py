"""The processes of one chaos run: a private redis-server, the fake crawler and N daemons.

Everything binds to 127.0.0.1. ``Cluster.close`` kills whatever is still running (SIGKILL after a short
SIGTERM wait), so a run never leaves a process behind, even on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from scheduler.config.durations import parse_duration
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.errors import SchedulerError
from scheduler.taskqueue import keys

BIN = Path(sys.executable).parent
SCHEDULER = BIN / "goodshunter-scheduler"
CRAWLER_STUB = BIN / "goodshunter-crawler-stub"
STREAM, GROUP = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP

# Every value is a real setting; short so that faults play out in seconds.
DAEMON_ENV = {
    "APP_METRICS_PORT": "0",
    "APP_LOG_FORMAT": "json",
    "APP_LOG_LEVEL": "info",
    "APP_CRAWLER_DEADLINE": "1500ms",
    "APP_CRAWLER_ATTEMPTS": "3",
    "APP_CRAWLER_BACKOFF_INITIAL": "20ms",
    "APP_CRAWLER_BACKOFF_MAX": "100ms",
    "APP_MAX_RETRY": "3",
    "APP_RETRY_BACKOFF_BASE": "100ms",
    "APP_RETRY_BACKOFF_MAX": "1s",
    "APP_LEASE_TIMEOUT": "3s",
    "APP_RECLAIM_INTERVAL": "1s",
    "APP_HEARTBEAT_INTERVAL": "1s",
    "APP_SHUTDOWN_GRACE": "10s",
    "APP_BREAKER_OPEN_DURATION": "1s",
    "APP_SCHEDULE_INTERVAL": "1000h",  # a resumed task is scheduled: never within a run
    "APP_TRIM_INTERVAL": "2s",
}
LEASE_TIMEOUT_S = 3.0
CRAWLER_DEADLINE_S = parse_duration(DAEMON_ENV["APP_CRAWLER_DEADLINE"])


class Crawler:
    """The fake crawler as a process on a fixed port, so a restart is at the same address."""

    def __init__(self, tmp: Path, delay_ms: int) -> None:
        self.tmp = tmp
        self.delay_ms = delay_ms
        self.port = free_port()
        self.calls_log = tmp / "calls.jsonl"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.tmp / f"crawler-{self.restarts}.out"
        with open(out, "wb") as sink:
            self.process = subprocess.Popen(
                [str(CRAWLER_STUB), "--port", str(self.port), "--calls-log", str(self.calls_log),
                 "--delay-ms", str(self.delay_ms)],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while b"listening on" not in out.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SchedulerError(f"crawler stub did not start: {out.read_text(errors='replace')}")
            time.sleep(0.02)
        self.restarts += 1

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    expected_exit: bool = False  # the harness signalled it (SIGKILL, SIGTERM): its exit code is no crash

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Cluster:
    tmp: Path
    daemons: int = 3
    workers: int = 8
    delay_ms: int = 100
    appendfsync: str = "always"
    extra_env: dict[str, str] = field(default_factory=dict)
    redis: RedisServer = field(init=False)
    crawler: Crawler = field(init=False)
    redis_url_for_daemons: str = ""
    all_daemons: list[Daemon] = field(default_factory=list)
    live: dict[str, Daemon] = field(default_factory=dict)
    _generation: int = 0

    def __post_init__(self) -> None:
        (self.tmp / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(
            appendonly=True, data_dir=str(self.tmp / "redis"), appendfsync=self.appendfsync
        )
        self.crawler = Crawler(self.tmp, self.delay_ms)

    def start_servers(self) -> None:
        self.redis.start()
        self.crawler.start()
        self.redis_url_for_daemons = self.redis_url_for_daemons or self.redis.url

    def new_name(self) -> str:
        self._generation += 1
        return f"chaos-{self._generation}"

    def start_daemon(self, name: str | None = None, wait: bool = True) -> Daemon:
        name = name or self.new_name()
        env = {
            **os.environ,
            **DAEMON_ENV,
            "REDIS_URL": self.redis_url_for_daemons,
            "APP_CRAWLER_GRPC_ADDR": self.crawler.address,
            **self.extra_env,
        }
        log_path = self.tmp / f"daemon-{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(SCHEDULER), "run", "--consumer", name, "--workers", str(self.workers)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        daemon = Daemon(name, process, log_path, time.time())
        self.all_daemons.append(daemon)
        self.live[name] = daemon
        if wait:
            self.wait_heartbeat(daemon)
        return daemon

    def wait_heartbeat(self, daemon: Daemon, timeout: float = 20.0) -> bool:
        key = keys.heartbeat_key(STREAM, GROUP, daemon.name)
        deadline = time.monotonic() + timeout
        client = self.redis.client(socket_timeout=1)
        try:
            while time.monotonic() < deadline and daemon.alive():
                try:
                    ttl = client.pttl(key)
                    if isinstance(ttl, int) and ttl > 0 and time.time() - daemon.started_at > 0.2:
                        return True
                except redis.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        return False

    def signal_daemon(self, daemon: Daemon, signum: int) -> None:
        if daemon.alive():
            if signum == signal.SIGKILL:
                daemon.expected_exit = True
            os.kill(daemon.pid, signum)
        if signum == signal.SIGKILL:
            daemon.process.wait(10)
            self.live.pop(daemon.name, None)

    def stop_daemon(self, daemon: Daemon, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the drain; None if it did not exit in time (then it is killed)."""
        self.signal_daemon(daemon, signal.SIGCONT)
        daemon.expected_exit = True
        if daemon.alive():
            daemon.process.send_signal(signal.SIGTERM)
        try:
            code = daemon.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            daemon.process.kill()
            daemon.process.wait(10)
        self.live.pop(daemon.name, None)
        return code

    def close(self) -> None:
        for daemon in self.all_daemons:
            if daemon.alive():
                try:
                    os.kill(daemon.pid, signal.SIGCONT)
                    daemon.process.kill()
                    daemon.process.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        self.crawler.kill()
        self.redis.kill()
